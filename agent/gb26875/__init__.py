"""GB/T 26875.3-2011: the user information transmission device (UITD) side of the link to a
city fire remote-monitoring centre, as pure, sans-IO building blocks.

    codec.py   the frame (@@ ... ##), its 6-byte time label, and FrameStream, the streaming
               decoder that never raises
    adu.py     application data units: one typed dataclass per typeflag the gateway sends
               (1, 2, 3, 4, 21, 24, 25, 26, 28; also 5-8) or must handle (61-68, 81-91),
               GB18030 descriptions, and `pack`, which batches objects within the limits
    tables.py  the standard's names for system, component and analog types, and its bits
    describe.py  one readable line per frame and JSON-ready objects, for logs and the centre
    link.py    Link: send/confirm with serial numbers, resends, heartbeat, link-fault
               detection, priority, answers to the centre's requests; no sockets, no threads,
               an injectable clock

Nothing here opens a socket, starts a thread or reads the system clock on its own: the uplink
that wires it to TCP and to the buffer owns all of that. docs/gb26875.md is the reference for
the centre's engineers, including the choices made where the public sources disagree.
"""
