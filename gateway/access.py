"""The anonymous principal, and the two-state answer the connections still pass around.

Who may read what is decided in gateway.authorization; this module only names the
principal of an `anon` key and the older `Access` shape (None: may not read; False:
may read; True: may also edit) that the connections' code uses between a decision
and the frame that states it.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

ANONYMOUS: Final = UUID(int=0)
# None: may not read; False: may read; True: may also edit (sees members-only rows).
Access = bool | None
