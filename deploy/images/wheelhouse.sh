#!/usr/bin/env bash
# Every wheel the images install, built on this host into ./wheelhouse, so that the image
# builds need no package index (docs/deploy.md, "Building without a registry or an index").
#
#   PY=.venv/bin/python deploy/images/wheelhouse.sh [EXTRAS]     (default EXTRAS: local)
#
# Wheels are for Python 3.11. Debian 12's python3 is 3.11.2, where redis also needs
# async-timeout; environment markers follow the interpreter that runs pip, so a newer host
# would skip it: it is named here. pip reuses its cache of llama-cpp-python's wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
"${PY:-.venv/bin/python}" -m pip wheel --quiet --wheel-dir wheelhouse ".[${1:-local}]" \
  'async-timeout>=4.0.3'
# The local image's llama-server: the one `make install` built on this host for the installed
# llama-cpp-python (service/llama_build.py), carried like the wheels. Without it the local
# image serves with llama-cpp-python's server.
rm -f wheelhouse/llama-server-*
server="$("${PY:-.venv/bin/python}" -c 'from service.llama_build import find_server
print(find_server() or "")')"
if [[ -n "$server" ]]; then
  # Named by its llama-cpp-python version: the image takes it only for the same version.
  cp "$server" "wheelhouse/$(basename "$(dirname "$server")")"
else
  echo "wheelhouse: no llama-server built here (make llama-server): the local image will" \
    "serve with llama-cpp-python's server"
fi
# The Dockerfile copies this list into the image before installing: a changed wheel changes it,
# so a builder's layer cache (which does not look inside bind mounts) cannot serve stale code,
# and the install checks every wheel against it.
(cd wheelhouse && sha256sum -- *.whl $(ls -d llama-server-* 2>/dev/null) > SHA256SUMS)
echo "wheelhouse: $(ls wheelhouse/*.whl | wc -l) wheels in $PWD/wheelhouse"
