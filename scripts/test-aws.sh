#!/usr/bin/env bash
# Checks of the AWS deployment (deploy/): cfn-lint and checkov (security scanner) on
# every CloudFormation template, ShellCheck on the shell scripts, hadolint on the Dockerfiles, then
# tests/aws/test_templates.py against a throwaway moto server (scripts/with-moto.sh):
# deploy.sh --dry-run, and the storage and compute stacks created on moto's
# CloudFormation. Installs what it needs: the pinned Python packages into .venv (checkov
# into .venv-checkov: its pins clash with pytest's, so it gets a venv of its own), and
# ShellCheck with apt-get when missing. Needs no AWS account and no Docker daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test-aws: $*"; }
start=$(date +%s)

scripts/venv.sh
if [ ! -x .venv-checkov/bin/python ]; then
    say "creating .venv-checkov"
    python3 -m venv .venv-checkov
fi
.venv-checkov/bin/pip install -q --disable-pip-version-check -r requirements-checkov.txt

if ! command -v shellcheck >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "shellcheck is missing and there is no sudo to install it"; exit 1; }
        sudo="sudo"
    fi
    say "installing shellcheck"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends shellcheck >/dev/null ||
        { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends shellcheck >/dev/null; }
fi

say "cfn-lint $(.venv/bin/cfn-lint --version | awk '{print $2}') on deploy/aws/templates/*.yaml"
.venv/bin/cfn-lint deploy/aws/templates/*.yaml

# Every exception is a skip with its reason in the template (Metadata: checkov: skip).
# --skip-download: the built-in checks only, no call to the vendor's platform.
say "checkov $(.venv-checkov/bin/checkov --version) on deploy/aws/templates"
.venv-checkov/bin/checkov --quiet --compact --skip-download --framework cloudformation \
    -d deploy/aws/templates

say "shellcheck $(shellcheck --version | awk '/^version:/ {print $2}') on the deploy scripts"
shellcheck deploy/aws/deploy.sh deploy/docker/runner-entrypoint.sh scripts/test-aws.sh

say "hadolint on deploy/docker/*.Dockerfile"
.venv/bin/hadolint deploy/docker/corral.Dockerfile deploy/docker/corral-runner.Dockerfile

say "pytest tests/aws (deploy.sh --dry-run; storage and compute stacks on moto)"
scripts/with-moto.sh .venv/bin/python -m pytest -q -p no:cacheprovider tests/aws

say "all checks passed in $(($(date +%s) - start))s"
