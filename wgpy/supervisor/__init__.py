"""The kube-vip-style supervisor: Secret configuration, Lease election, tunnel lifecycle.

Submodules are imported explicitly (``wgpy.supervisor.election`` pulls in the ``kubernetes``
client, which is slow to import); ``lease`` and ``config`` are sans-IO.
"""

from __future__ import annotations
