#!/usr/bin/env bash
# Render editors/ghost-text.png (and the plain-text editors/ghost-text.txt): Neovim with the
# plugin in a tmux pane, typing into demo.py until a draft shows as ghost text.
#   DRAFTLINE_CMD="draftline serve" PYTHON_PIL=/path/to/python-with-pillow editors/screenshot/shot.sh
# Needs tmux, nvim, the server, and a Python with Pillow (for ansi2png.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/.."
pil="${PYTHON_PIL:-python3}"
export DRAFTLINE_CMD="${DRAFTLINE_CMD:-draftline serve}"
work="$(mktemp -d)"
sess="draftline-shot-$$"
cleanup() { tmux kill-session -t "$sess" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cp "$here/demo.py" "$work/demo.py"
cd "$work"
tmux new-session -d -s "$sess" -x 88 -y 20 "nvim -u '$here/init.lua' demo.py"

wait_for() {  # wait_for SECONDS COMMAND...: poll every 0.5 s until COMMAND succeeds
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ $SECONDS -lt $deadline ] || { echo "shot.sh: timed out waiting for: $*" >&2; return 1; }
        sleep 0.5
    done
}
started() { tmux capture-pane -t "$sess" -p | grep -q 'draftline *$'; }
ghost_on_cursor_row() {
    local y; y=$(tmux display -p -t "$sess" '#{cursor_y}')
    tmux capture-pane -t "$sess" -p -e | sed -n "$((y + 1))p" | grep -q $'\e\\[3m'
}

wait_for 60 started
tmux send-keys -t "$sess" G o
tmux send-keys -t "$sess" -l 'closest_point = None'
tmux send-keys -t "$sess" Enter
tmux send-keys -t "$sess" -l 'for p in points:'
tmux send-keys -t "$sess" Enter
sleep 1
wait_for 180 ghost_on_cursor_row
sleep 0.5
tmux capture-pane -t "$sess" -p -e > "$work/shot.ansi"
cursor="$(tmux display -p -t "$sess" '#{cursor_x},#{cursor_y}')"
"$pil" "$here/ansi2png.py" "$work/shot.ansi" "$out/ghost-text.png" --cols 88 --cursor "$cursor"
sed -e 's/\x1b\[[0-9;]*m//g' "$work/shot.ansi" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > "$out/ghost-text.txt"
echo "shot.sh: wrote $out/ghost-text.png and $out/ghost-text.txt"
tmux send-keys -t "$sess" Escape ':qa!' Enter
