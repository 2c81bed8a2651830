"""Deciding how to spend a request's tokens: prompt reading, features, classifier, policies.

Pure Python plus scikit-learn and numpy: no web framework, no HTTP client, no Prometheus.
``service`` imports this package, never the reverse.

Entry point for the gateway::

    classifier, policies = router_models.load_default()
    scores = classifier.score(messages)                 # Scores, well under 1 ms
    decision = policies["learned"].decide(scores, budget_tokens=cap, strategy=forced)
    decision.plan                                       # Plan with policy, probability, reason
    policies["learned"].update(scores, plan, correct)   # feedback
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router_models.classifier import Classifier
    from router_models.policies import Policy


logger = logging.getLogger(__name__)


def load_default(directory: Path | None = None, **learned_options: Any
                 ) -> tuple[Classifier, dict[str, Policy]]:
    """The classifier and the named policies ``rules`` and ``learned``.

    Args:
        directory: a directory written by ``ttc-router train`` (for example
            ``DATA_DIR/models``); each artifact missing there comes from the shipped default
            in ``router_models/artifacts``.
        learned_options: ``LearnedPolicy`` settings (``target_tokens``, ``exploration``, ...)
            overriding the stored state's.

    Raises:
        classifier.ArtifactError, policies.PolicyError: an artifact is unreadable. A
            classifier built for another feature set (``StaleFeaturesError``) is not an
            error: it is logged and the shipped classifier is used.
    """
    from router_models.classifier import Classifier, StaleFeaturesError
    from router_models.policies import LearnedPolicy, RulesPolicy, parse_policy

    classifier = None
    if directory is not None and (directory / "classifier.json").exists():
        try:
            classifier = Classifier.load(directory)
        except StaleFeaturesError as exc:
            # An older version's artifact (train --from-log copies the classifier alongside
            # the policy): its weights cannot score today's features, and refusing to start
            # would turn an upgrade into an outage. The shipped classifier reads them.
            logger.warning("%s; scoring with the shipped classifier instead", exc)
    if classifier is None:
        classifier = Classifier.load()
    if directory is not None and (directory / "learned.json").exists():
        learned: Policy = LearnedPolicy.load(directory / "learned.json", **learned_options)
    else:
        learned = parse_policy("learned", **learned_options)
    return classifier, {"rules": RulesPolicy.from_yaml(), "learned": learned}
