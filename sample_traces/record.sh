#!/usr/bin/env bash
# Re-record the sample traces: voiceaudit's own probe against its built-in reference
# pipeline, one run per configuration, three of the bundled utterances each.
#
#   sample_traces/record.sh            # from the repository root
#   VOICEAUDIT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report_golden.py
#
# The second command rewrites the golden reports next to each trace (report.txt,
# report.md, report.json) from the new recordings. Timings differ from one recording to
# the next, so re-recording always changes the goldens; the analysis of one recording
# never does.
set -euo pipefail
cd "$(dirname "$0")/.."
VA=${VA:-.venv/bin/voiceaudit}
AUDIO=(voiceaudit/data/utterances/01_weather.wav voiceaudit/data/utterances/03_lights.wav
       voiceaudit/data/utterances/05_joke.wav)

record() {  # name, then run options
    local name=$1
    shift
    local dir=sample_traces/$name
    rm -rf "$dir.tmp"
    "$VA" run "${AUDIO[@]}" --out "$dir.tmp" "$@" >/dev/null || true  # failed turns exit non-zero
    mkdir -p "$dir"
    gzip -9 -n -c "$dir.tmp/trace.jsonl" > "$dir/trace.jsonl.gz"
    if [ -f "$dir.tmp/ground_truth.jsonl" ]; then
        gzip -9 -n -c "$dir.tmp/ground_truth.jsonl" > "$dir/ground_truth.jsonl.gz"
    fi
    rm -rf "$dir.tmp"
}

record clean -p websocket
record clean-realtime -p realtime
record leading-silence -p websocket --inject leading-silence=300ms
record sentence-aggregation -p websocket --inject sentence-aggregation
record whole-result-handoff -p cascade -o handoff=whole
record large-audio-buffer -p websocket --inject audio-chunk=1000ms
record slow-audio -p websocket --inject slow-audio=0.8
record slow-first-token -p websocket --inject llm-ttft=600ms
# The timeout sits inside the spread of voice-to-voice times (about 0.85-1 s on an idle
# machine), so some turns time out and the replies they gave up on arrive late; a
# recording with no failed turn, or no ok one, is made again.
for attempt in 1 2 3 4 5; do
    record failed-turns -p websocket --timeout 0.92 --repeat 2
    if "$VA" report sample_traces/failed-turns/trace.jsonl.gz -f json 2>/dev/null | python3 -c '
import json, sys
c = json.load(sys.stdin)["counts"]
sys.exit(0 if c["failed"] >= 1 and c["ok"] >= 1 else 1)'; then
        break
    fi
    echo "failed-turns: attempt $attempt had no failed turn or no ok one; recording again" >&2
done
