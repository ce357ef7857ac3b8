"""The PJSIP adapter: a thin layer that answers calls and moves 20 ms frames to the call core.

Only `agent.py`, `call.py`, `port.py` and `bytevector.py` import pjsua2; everything else here is
plain Python so it can be tested without a SIP stack.
"""
