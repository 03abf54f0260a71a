#!/usr/bin/env bash
# sigil's one test command (README "Quick start"; CI's .ci/run calls exactly this).
# On a fresh Debian machine, as root, it installs what is missing, then checks formatting, lints,
# the simulator's dependency boundary, and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A one-shot build gains nothing from incremental caches, which would double the target dir.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests need; installed only when missing.
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# node/tests/x509pop.rs makes its CA and agent certificates with the openssl CLI (the README's recipe).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# py-spiffe interop (node/tests/api_cli.rs) runs in a venv: python3 with venv + ensurepip.
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# TPM attestation (feature tpm): tss-esapi links tpm2-tss (libtss2-dev); node/tests/tpm.rs
# manufactures software TPMs with swtpm_setup + swtpm_localca (swtpm-tools) and runs swtpm.
pkg-config --exists tss2-esys tss2-tctildr 2>/dev/null || need+=(libtss2-dev)
command -v swtpm >/dev/null 2>&1 || need+=(swtpm)
command -v swtpm_setup >/dev/null 2>&1 || need+=(swtpm-tools)
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing packages ${need[*]} and not root; install them with apt-get" >&2
    exit 1
  fi
  step "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# Unmodified py-spiffe 0.3.2 for the interop test, in a venv under the target dir (reused
# when it already has the pinned version). Run outside this script, the test says it skipped.
PYSPIFFE_VERSION=0.3.2
venv="${CARGO_TARGET_DIR:-target}/pyspiffe-venv"
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('spiffe') != '$PYSPIFFE_VERSION')" >/dev/null 2>&1; then
  step "installing py-spiffe $PYSPIFFE_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "spiffe==$PYSPIFFE_VERSION"
fi
SIGIL_PYSPIFFE_PYTHON="$(cd "$venv/bin" && pwd)/python"
export SIGIL_PYSPIFFE_PYTHON

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (deny warnings; disallowed clocks/RNG/spawn outside the shell)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "simulator boundary: sim must not link quinn, sled, tonic or hyper"
if cargo tree -p sim -e normal --prefix none --locked | grep -E '^(quinn|quinn-proto|sled|tonic|hyper) ' ; then
  echo "error: the sim crate's dependency graph reaches a production-only crate (above)" >&2
  exit 1
fi

step "cargo test --workspace"
cargo test --workspace --locked

step "TPM attestation (feature tpm): clippy, and the tests against swtpm"
cargo clippy -p node --features tpm --all-targets --locked -- -D warnings
cargo test -p node --features tpm --locked --test tpm

step "all checks passed"
