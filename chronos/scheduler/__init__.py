"""Leader-only scheduler loops (stager, enqueuer, rescuer) and the service that runs them."""

from .service import SchedulerService
from .stager import Stager

__all__ = ["SchedulerService", "Stager"]
