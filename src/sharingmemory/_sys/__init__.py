"""Layer 2, the system calls both ends share, named after the calls they make.

`unix`: SOCK_SEQPACKET, SCM_RIGHTS and SO_PEERCRED. No policy lives here: what a message means,
and whom to trust, is decided above.
"""
