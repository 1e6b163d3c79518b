"""A PocketSphinx speech-recognition worker process (run as ``python -m``).

PocketSphinx holds the GIL while it decodes, so the server keeps it out of its own
process: each worker loads the model once, then decodes any number of interleaved
utterance streams sent over stdin, and answers on stdout. Frames both ways are
``<B op><I stream_id><I length>`` followed by ``length`` bytes of payload.

Parent → worker: START (payload: nothing), AUDIO (16 kHz mono s16le), END, CANCEL.
Worker → parent: READY (once, after warm-up), FINAL (JSON ``{"text", "decode_ns",
"end_ns"}``), ERROR (JSON ``{"message"}``). The worker exits when stdin closes.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, BinaryIO

import voiceaudit.reference.asr_protocol as wire

#: Search limit: active HMMs per frame (PocketSphinx's default is 30000). On the real
#: recordings in the tests (cards, digits, LibriVox read speech, JFK) 3000 gives the same
#: transcripts, word for word, for 2.5x less CPU — what lets two workers keep up with
#: several callers on two cores.
MAX_HMM_PER_FRAME = 3000

#: Idle decoders kept for reuse (each holds its own copy of the model).
MAX_IDLE_DECODERS = 8


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(out: BinaryIO, op: int, stream_id: int, payload: bytes = b"") -> None:
    out.write(wire.frame(op, stream_id, payload))
    out.flush()


#: Initial cepstral mean for every utterance. PocketSphinx's built-in prior (40,3,-1,0…)
#: is far from real recordings and costs it the first words of each utterance; this one
#: is what the decoder learns from eSpeak NG (en-us, 175 wpm) saying DERIVE_TEXT, a
#: speech-like starting point. Regenerate with
#: ``python -m voiceaudit.reference._asr_worker --derive-cmn``.
CMN_PRIOR = (
    "52.2045,2.99785,-3.0523,13.1184,-8.63637,3.60422,1.29318,"
    "-15.2299,-2.23125,-5.70599,10.3201,-3.32088,-3.6959"
)
DERIVE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Ten of clubs, seven of hearts, one two three."
)


def derive_cmn() -> str:
    """Decode eSpeak NG's rendering of DERIVE_TEXT and return the adapted cepstral mean."""
    import numpy as np
    from pocketsphinx import Decoder

    from voiceaudit.reference.dsp import StreamResampler, float_to_pcm16
    from voiceaudit.reference.tts import espeak

    decoder = Decoder(loglevel="FATAL")
    engine = espeak()
    speech = engine.synthesize_all(DERIVE_TEXT).astype(np.float32) / 32768.0
    rs = StreamResampler(engine.rate, 16000)
    pcm = float_to_pcm16(np.concatenate([rs.process(speech), rs.flush()]))
    decoder.start_utt()
    for i in range(0, len(pcm), 640):
        decoder.process_raw(pcm[i : i + 640], False, False)
    decoder.end_utt()
    return str(decoder.get_cmn())


def main() -> int:
    from pocketsphinx import Decoder, set_loglevel

    set_loglevel("FATAL")
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    # Nothing but frames may reach stdout.
    sys.stdout = sys.stderr

    def new_decoder() -> Any:
        return Decoder(loglevel="FATAL", maxhmmpf=MAX_HMM_PER_FRAME)

    idle: list[Any] = [new_decoder()]
    prior_cmn = CMN_PRIOR

    active: dict[int, Any] = {}
    decode_ns: dict[int, int] = {}
    _send(stdout, wire.OP_READY, 0)

    while True:
        head = _read_exact(stdin, wire.HEADER.size)
        if head is None:
            return 0
        op, sid, length = wire.HEADER.unpack(head)
        payload = _read_exact(stdin, length) if length else b""
        if payload is None:
            return 0
        try:
            if op == wire.OP_START:
                dec = idle.pop() if idle else new_decoder()
                # Every utterance starts from the same cepstral-mean estimate, so its
                # transcript does not depend on what this decoder heard before.
                dec.set_cmn(prior_cmn)
                dec.start_utt()
                active[sid] = dec
                decode_ns[sid] = 0
            elif op == wire.OP_AUDIO:
                dec = active.get(sid)
                if dec is not None:
                    t0 = time.monotonic_ns()
                    dec.process_raw(payload, False, False)
                    decode_ns[sid] += time.monotonic_ns() - t0
            elif op in (wire.OP_END, wire.OP_CANCEL):
                dec = active.pop(sid, None)
                spent = decode_ns.pop(sid, 0)
                if dec is None:
                    continue
                t0 = time.monotonic_ns()
                dec.end_utt()
                end_ns = time.monotonic_ns() - t0
                if op == wire.OP_END:
                    hyp = dec.hyp()
                    text = hyp.hypstr if hyp is not None else ""
                    body = {"text": text, "decode_ns": spent, "end_ns": end_ns}
                    _send(stdout, wire.OP_FINAL, sid, json.dumps(body).encode())
                if len(idle) < MAX_IDLE_DECODERS:
                    idle.append(dec)
        except Exception as exc:  # one bad stream must not kill the others
            active.pop(sid, None)
            body = {"message": f"{type(exc).__name__}: {exc}"}
            _send(stdout, wire.OP_ERROR, sid, json.dumps(body).encode())


if __name__ == "__main__":
    if sys.argv[1:] == ["--derive-cmn"]:
        print(derive_cmn())
        sys.exit(0)
    sys.exit(main())
