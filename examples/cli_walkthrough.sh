#!/usr/bin/env bash
# Walkthrough of the `lipsim-score` command line tool: scoring two folders of images, the three output formats,
# and how problems are reported (a file without a partner, a corrupt file, a missing folder) and the exit codes.
#
# Usage (from the repository root):
#     bash examples/cli_walkthrough.sh                                  # package default weights, temp folder
#     bash examples/cli_walkthrough.sh --weights path/to/weights.safetensors --workdir /tmp/lipsim-cli
#
# Environment: PYTHON (default: python) generates the images; LIPSIM_SCORE (default: lipsim-score, or
# "$PYTHON -m lipsim_metric.cli" when the console script is not on PATH) is the command under test.
# The script itself exits 0 when every command returned the exit code the walkthrough expects, 1 otherwise.
set -u

WEIGHTS=""
WORKDIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --weights) WEIGHTS="$2"; shift 2 ;;
        --workdir) WORKDIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

PYTHON="${PYTHON:-python}"
if [ -n "${LIPSIM_SCORE:-}" ]; then
    read -r -a SCORE <<< "$LIPSIM_SCORE"
elif command -v lipsim-score > /dev/null 2>&1; then
    SCORE=(lipsim-score)
else
    SCORE=("$PYTHON" -m lipsim_metric.cli)
fi
WEIGHT_ARGS=()
[ -n "$WEIGHTS" ] && WEIGHT_ARGS=(--weights "$WEIGHTS")
[ -n "$WORKDIR" ] || WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/lipsim-cli.XXXXXX")"
mkdir -p "$WORKDIR"
cd "$WORKDIR" || exit 2

echo "== 1. Two folders of generated images in $WORKDIR"
# reference/: scene_0..3.png.  distorted/: scene_0.png (blurred), scene_1.jpg (JPEG copy: paired with
# scene_1.png because only the extension differs), scene_2.png (corrupt: not an image), no scene_3 (missing
# partner), extra.png (only on this side).
"$PYTHON" - <<'EOF' || exit 2
import numpy as np
from pathlib import Path
from PIL import Image, ImageFilter

rng = np.random.default_rng(0)
ref, dis = Path("reference"), Path("distorted")
ref.mkdir(exist_ok=True)
dis.mkdir(exist_ok=True)
yy, xx = np.mgrid[0:64, 0:64] / 63.0
for i in range(4):
    base = np.stack([xx * (i + 1) % 1.0, yy, 0.5 + 0.5 * np.sin(6.28 * (i + 1) * (xx + yy))], axis=-1)
    image = Image.fromarray((255 * base).astype(np.uint8))
    image.save(ref / f"scene_{i}.png")
    if i == 0:
        image.filter(ImageFilter.GaussianBlur(1.5)).save(dis / "scene_0.png")
    elif i == 1:
        image.save(dis / "scene_1.jpg", quality=30)
(dis / "scene_2.png").write_bytes(b"this is not a PNG file")
Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(dis / "extra.png")
EOF
ls -R reference distorted

FAILURES=0
# run EXPECTED_CODE COMMAND...: show the command, run it, show its exit code.
run() {
    local expected="$1"
    shift
    echo
    echo "\$ $*"
    "$@"
    local code=$?
    echo "[exit code: $code]"
    if [ "$code" -ne "$expected" ]; then
        echo "!! expected exit code $expected" >&2
        FAILURES=$((FAILURES + 1))
    fi
}

echo
echo "== 2. Table on stdout. scene_2 is corrupt -> reported on stderr, the other pairs are scored, exit code 1."
echo "   scene_3.png and extra.png have no partner -> listed on stderr, not scored."
run 1 "${SCORE[@]}" reference distorted "${WEIGHT_ARGS[@]}" --quiet

echo
echo "== 3. CSV into a file (the summary line goes to stderr, so the file stays plain CSV)."
run 1 "${SCORE[@]}" reference distorted "${WEIGHT_ARGS[@]}" --quiet --format csv --output scores.csv
cat scores.csv

echo
echo "== 4. JSON into a file: pairs, summary, failed files and unmatched files, all in one document."
run 1 "${SCORE[@]}" reference distorted "${WEIGHT_ARGS[@]}" --quiet --format json --output scores.json
cat scores.json

echo
echo "== 5. Two image files: every pair scored -> exit code 0."
run 0 "${SCORE[@]}" reference/scene_0.png distorted/scene_0.png "${WEIGHT_ARGS[@]}" --quiet

echo
echo "== 6. A folder that does not exist: nothing scored -> exit code 2 (usage error)."
run 2 "${SCORE[@]}" reference no-such-folder "${WEIGHT_ARGS[@]}" --quiet

echo
echo "Exit codes: 0 every pair scored, 1 some images unreadable (the rest scored), 2 nothing scored."
echo "Files written in $WORKDIR: scores.csv, scores.json"
if [ "$FAILURES" -ne 0 ]; then
    echo "$FAILURES command(s) did not return the expected exit code" >&2
    exit 1
fi
exit 0
