#!/usr/bin/env bash
# Debian packages the deployment tests use, installed once (idempotent):
#   prometheus  -> prometheus, promtool (alert rules, a real scrape of `selfheal serve`)
#   kubectl     -> `kubectl kustomize` (the manifests; no cluster needed)
#   chromium    -> headless rendering of the chaos suite's HTML report (its charts are drawn)
#   postgresql  -> a real PostgreSQL server for MLflow's store (flows/local/postgres.py starts its own)
#   haproxy     -> `python -m serving --front haproxy` (retries a request whose worker died before answering)
set -euo pipefail
need=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v kubectl >/dev/null || need+=(kubectl)
command -v chromium >/dev/null || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v haproxy >/dev/null || need+=(haproxy)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
# policy-rc.d (containers) or the missing init system keeps the packaged services stopped.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
