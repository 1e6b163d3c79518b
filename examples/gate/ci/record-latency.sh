#!/usr/bin/env bash
# Record a voiceaudit run of the bot checked out in DIR into the run directory OUT:
#
#   ci/record-latency.sh DIR OUT
#
# Starts the bot, waits until it answers, replays voiceaudit's bundled utterances through
# it (four passes, the first turn a warm-up) and stops the bot. As shipped, voiceaudit's
# own reference pipeline stands in for the bot: change the two lines marked "your bot".
# VOICEAUDIT_RUN_ARGS replaces the run options (default: --repeat 4 --warmup 1).
set -euo pipefail
dir=$1
out=$2
port=${BOT_PORT:-8765}
mkdir -p "$(dirname "$out")"

# your bot: how it starts (from "$dir"), listening on $port
(cd "$dir" && exec voiceaudit serve --port "$port") > "$out.bot.log" 2>&1 &
bot=$!
trap 'kill "$bot" 2> /dev/null || true' EXIT

ready() {
    # your bot: a request that succeeds once it is ready
    curl -fsS "http://127.0.0.1:$port/voiceaudit/status" > /dev/null 2>&1
}
for _ in $(seq 120); do
    ready && break
    if ! kill -0 "$bot" 2> /dev/null; then
        echo "the bot exited before it was ready: see $out.bot.log" >&2
        exit 1
    fi
    sleep 1
done
ready || { echo "the bot did not answer within 120 s: see $out.bot.log" >&2; exit 1; }

# shellcheck disable=SC2086  # word splitting of the options is intended
voiceaudit run --target "ws://127.0.0.1:$port/v1/pcm" --protocol websocket \
    ${VOICEAUDIT_RUN_ARGS:---repeat 4 --warmup 1} --out "$out"
