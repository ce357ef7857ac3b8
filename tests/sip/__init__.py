"""SIP test harness: real peers (sipp, baresip) that dial the server over loopback."""
