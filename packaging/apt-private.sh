#!/usr/bin/env bash
# Usage: apt-private.sh DIR apt-get|apt-cache ARGS...
# Run apt with DIR/sources.list and DIR's own lists and caches, so fetching
# from another suite (or deb-src) leaves the system's apt config, lists and
# caches untouched. The caller writes DIR/sources.list (see apt-sources.sh).
set -euo pipefail
A=$(cd "$1" && pwd)
shift
mkdir -p "$A/lists/partial" "$A/archives/partial" "$A/cache"
tool=$1
shift
exec "$tool" -o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" \
    -o "Dir::Cache::archives=$A/archives" -o APT::Sandbox::User=root "$@"
