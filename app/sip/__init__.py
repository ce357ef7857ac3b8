"""The PJSIP adapter: a thin layer that answers calls, moves 20 ms frames and keypresses to the
call core, and carries out its transfers.

Only `agent.py`, `call.py`, `port.py`, `bytevector.py`, `transfer.py`, `info.py` and
`native.py` import pjsua2; everything else here is plain Python so it can be tested without a
SIP stack.
"""
