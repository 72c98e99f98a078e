"""Active/standby failover of one service address between devices (VRRP's election).

See docs/failover.md; the wire format is in atoll.failover.protocol, the
election in atoll.failover.election and the agent in atoll.failover.agent.
"""

from atoll.failover.agent import FailoverAgent, read_status
from atoll.failover.config import Endpoint, FailoverConfig, load_config
from atoll.failover.election import (
    Action,
    Election,
    ElectionSettings,
    Role,
    master_down_interval,
    skew_time,
)
from atoll.failover.protocol import Advert, AdvertError, decode

__all__ = [
    "Action",
    "Advert",
    "AdvertError",
    "Election",
    "ElectionSettings",
    "Endpoint",
    "FailoverAgent",
    "FailoverConfig",
    "Role",
    "decode",
    "load_config",
    "master_down_interval",
    "read_status",
    "skew_time",
]
