#!/usr/bin/env bash
# The README's quick start: `bash packaging/quickstart.sh demo|test` as root on a
# fresh Debian 12 / Ubuntu 24.04 machine.  Installs what `make` itself needs,
# then hands over to the Makefile (which installs the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v make >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make >/dev/null
fi
exec make "${@:-test}"
