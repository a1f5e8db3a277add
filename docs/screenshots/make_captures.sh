#!/usr/bin/env bash
# Text captures of a Lightning fit's output in a real terminal (tmux), at 80 and 120 columns.
#   before: perfcallbacks at commit 334fd40 (tables printed straight to stdout, fixed 120-column rich table)
#   after:  the working tree
# Usage: docs/screenshots/make_captures.sh [before|after|both]   (needs tmux: apt-get install tmux)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
BEFORE_TREE="${BEFORE_TREE:-/tmp/perfcallbacks-before}"
which="${1:-both}"

if [[ "$which" != after && ! -d "$BEFORE_TREE/perfcallbacks" ]]; then
  mkdir -p "$BEFORE_TREE"
  git -C "$ROOT" archive 334fd40 perfcallbacks | tar -x -C "$BEFORE_TREE"
fi

capture() {  # name width pythonpath bar
  local name="$1" width="$2" pp="$3" bar="$4" session="pc-$1-$2-$4" out="$HERE/$1-lightning-$4-$2.txt"
  tmux kill-session -t "$session" 2>/dev/null || true
  tmux new-session -d -s "$session" -x "$width" -y 60 \
    "cd /tmp && env DEMO_BAR=$bar PYTHONPATH=$pp HF_HUB_OFFLINE=1 PYTHONWARNINGS=default $PY $HERE/fit_demo.py; echo EXIT=\$?; sleep 600"
  tmux set-option -t "$session" history-limit 5000 >/dev/null
  for _ in $(seq 1 240); do
    tmux capture-pane -p -t "$session" -S - | grep -q "^EXIT=" && break
    sleep 1
  done
  {
    echo "# $name ($bar progress bar): tmux new-session -x $width -y 60 'DEMO_BAR=$bar python docs/screenshots/fit_demo.py'; tmux capture-pane -p -S -"
    echo "# (what the terminal shows, $width columns; trailing spaces stripped)"
    tmux capture-pane -p -t "$session" -S - | sed -e 's/[[:space:]]*$//' | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'
  } > "$out"
  tmux kill-session -t "$session"
  echo "wrote $out"
}

for bar in tqdm rich; do
  for width in 80 120; do
    if [[ "$which" != after ]]; then capture before "$width" "$BEFORE_TREE" "$bar"; fi
    if [[ "$which" != before ]]; then capture after "$width" "$ROOT" "$bar"; fi
  done
done
