"""``ttc-router keys create|list|revoke``: the gateway's API keys, in the shared data directory
(or the request log's PostgreSQL database), picked up by a running gateway without a restart."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from service.keys import KeyStore, KeyStoreError, SqliteKeyStore, open_key_store
from service.settings import SettingsError, load_settings


def register(subcommands: Any) -> None:
    keys = subcommands.add_parser(
        "keys", help="create, list and revoke API keys",
        description="Manage the gateway's API keys. Once any key exists, every /v1/* request "
                    "needs `Authorization: Bearer KEY`. Only a hash of each key is stored; a "
                    "running gateway picks up changes within keys_refresh_s (1 s).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML config file (also TTC_CONFIG)")
    common.add_argument("--data-dir", type=Path,
                        help="state directory (default TTC_DATA_DIR, else "
                             "~/.local/share/ttc-router)")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create", parents=[common], help="create a key and print it once",
        description="Create a key named NAME and print it once, alone on the last line. "
                    "Limits count upstream completion tokens; omitted limits are unlimited.")
    create.add_argument("name", help="the key's name (metrics label, request log): 1-64 "
                                     "letters, digits, '_', '.', '-'")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="completion tokens per minute")
    create.add_argument("--tokens-per-day", type=int, help="completion tokens per UTC day")
    create.add_argument("--prompt-tpm", type=int,
                        help="prompt tokens per minute (every upstream call's prompt counts)")
    create.add_argument("--admin", action="store_true",
                        help="also allow the admin surfaces (experiments, protected /metrics)")
    create.set_defaults(run=_create)

    listing = actions.add_parser("list", parents=[common],
                                 help="list the keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(run=_list)

    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key by name")
    revoke.add_argument("name")
    revoke.set_defaults(run=_revoke)


def _store(args: argparse.Namespace) -> KeyStore:
    settings = load_settings(args.config, data_dir=args.data_dir)
    url = settings.database_url.get_secret_value() if settings.database_url else None
    return open_key_store(settings.data_dir, url)


def _missing(store: KeyStore) -> Path | None:
    """The SQLite key file when it does not exist yet (opening it would create it and its
    directory, which a command that only reads or revokes keys must not), else None."""
    if isinstance(store, SqliteKeyStore) and not store.path.is_file():
        return store.path
    return None


_NO_STORE = ("no key store at {path} yet: no key was created with this data directory (check "
             "--data-dir or TTC_DATA_DIR; keys create makes it)")


def _fail(message: str) -> int:
    print(f"ttc-router keys: {message}", file=sys.stderr)
    return 1


def _create(args: argparse.Namespace) -> int:
    try:
        secret = _store(args).create(args.name, rpm=args.rpm, tpm=args.tpm,
                                     tokens_per_day=args.tokens_per_day, admin=args.admin,
                                     prompt_tpm=args.prompt_tpm)
    except (SettingsError, KeyStoreError, ValueError) as exc:
        return _fail(str(exc))
    limits = ", ".join(f"{label} {value}" for label, value in (
        ("rpm", args.rpm), ("tpm", args.tpm), ("tokens/day", args.tokens_per_day),
        ("prompt tpm", args.prompt_tpm))
        if value is not None) or "no limits"
    print(f"created {'admin ' if args.admin else ''}key {args.name!r} ({limits}); "
          "it is shown once, store it now:")
    print(secret)
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        store = _store(args)
        missing = _missing(store)
        if missing is not None:  # no keys, and nothing created
            print(f"ttc-router keys: {_NO_STORE.format(path=missing)}", file=sys.stderr)
        keys = [] if missing is not None else store.all()
    except (SettingsError, KeyStoreError) as exc:
        return _fail(str(exc))
    rows = [("NAME", "ADMIN", "RPM", "TPM", "TOKENS/DAY", "PROMPT TPM", "CREATED (UTC)",
             "STATUS")]
    for key in keys:
        if key.revoked_s is not None and not args.all:
            continue
        rows.append((key.name, "yes" if key.admin else "no", _limit(key.rpm), _limit(key.tpm),
                     _limit(key.tokens_per_day), _limit(key.prompt_tpm),
                     time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created_s)),
                     "revoked" if key.revoked_s is not None else "active"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, data_dir=args.data_dir)
        store = _store(args)
        missing = _missing(store)
        if missing is not None:
            return _fail(f"no active key is named {args.name!r}: "
                         + _NO_STORE.format(path=missing))
        store.revoke(args.name)
        left = len(store.active())
    except (SettingsError, KeyStoreError) as exc:
        return _fail(str(exc))
    print(f"revoked key {args.name!r}; a running gateway refuses it within a second")
    if not left and not settings.require_keys:
        # With no active key the gateway is open (service.admission): revoking the last key
        # lets every client in, the revoked key's holder too. Say so where it happens.
        print("ttc-router keys: warning: no active key remains, so the gateway now serves "
              "every client without a key; set require_keys: true (TTC_REQUIRE_KEYS=true) "
              "to refuse them", file=sys.stderr)
    return 0


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)
