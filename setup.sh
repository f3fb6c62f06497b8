#!/usr/bin/env bash
# Sets up plmtune on a fresh machine: system packages, torch (CPU wheel), plmtune and its dependencies.
# GPU users: install the torch build for your CUDA first (see pytorch.org); the pinned line below
# then finds torch already installed only if it is exactly 2.13.0, so edit TORCH_SPEC or skip it:
#   TORCH_SPEC=skip bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# Debian packages: WordNet 3.0 for EDA data augmentation (read from /usr/share/wordnet) and
# chromium, in which the tests check that the HTML benchmark report renders.
if command -v apt-get >/dev/null 2>&1 && { ! [ -f /usr/share/wordnet/data.noun ] || ! command -v chromium >/dev/null; }; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends wordnet-base chromium >/dev/null
fi

# Pinned first: an unpinned torch would pull a multi-GB CUDA build on machines without a GPU.
if [ "$TORCH_SPEC" != "skip" ]; then
  "$PYTHON" -m pip install -q "$TORCH_SPEC"
fi
# Editable, so that results record the git commit of this checkout.
"$PYTHON" -m pip install -q -e ".[dev,bench,export,tracking,mpnet,ray]"
"$PYTHON" -c "import plmtune, torch; print(f'plmtune ready (torch {torch.__version__})')"
