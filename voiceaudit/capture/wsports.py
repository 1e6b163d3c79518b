"""UDP ports whose Wireshark 4.0 dissector takes an RTP-looking datagram for itself.

Wireshark tries a UDP payload's port dissectors (lower port first) before its heuristic
dissectors, so with the ``rtp_udp`` heuristic on, RTP to or from one of these ports is not
found as RTP. This set was measured, not copied: one RTP stream was sent to every port in
TShark 4.0.17's ``udp.port`` table (``tshark -G decodes``) and these are the ports whose
streams TShark's ``-z rtp,streams`` did *not* list. ``tests/test_net_wireshark.py``
re-measures it against the installed TShark when one is present.
"""

from __future__ import annotations

# fmt: off
CLAIMING_UDP_PORTS: frozenset[int] = frozenset(
    {
        7, 13, 19, 37, 49, 53, 67, 68, 69, 111, 123, 137, 138, 173, 213, 269, 319, 320, 389,
        427, 434, 464, 496, 500, 513, 514, 520, 521, 524, 525, 546, 547, 664, 701, 853, 854,
        910, 921, 925, 1001, 1113, 1153, 1194, 1293, 1628, 1629, 1718, 1719, 1745, 1755,
        1900, 1985, 2029, 2099, 2157, 2221, 2222, 2246, 2268, 2269, 2313, 2345, 2887, 2944,
        2945, 2948, 2949, 3000, 3130, 3250, 3343, 3357, 3389, 3452, 3455, 3544, 3567, 3671,
        3784, 3785, 3804, 3863, 4305, 4306, 4307, 4341, 4342, 4500, 4551, 4555, 4569, 4729,
        4754, 4784, 4789, 4790, 4791, 4991, 5031, 5072, 5246, 5247, 5353, 5355, 5404, 5405,
        5436, 5567, 5683, 5684, 5868, 6073, 6081, 6118, 6160, 6635, 6784, 6970, 7074, 7075,
        7255, 7275, 7784, 8200, 8600, 8767, 8805, 8848, 9200, 9201, 9202, 9203, 9214, 9875,
        9877, 9899, 9901, 9956, 10253, 11211, 11273, 12000, 12001, 12002, 12003, 12004,
        12220, 12222, 12223, 13400, 17220, 17500, 17755, 17756, 19132, 19948, 19999, 23272,
        24576, 24577, 25826, 26000, 27500, 27910, 27950, 27951, 27952, 27953, 27960, 27961,
        27962, 27963, 32000, 32512, 34962, 34980, 37008, 41170, 44818, 47000, 54328
    }
)
# fmt: on
