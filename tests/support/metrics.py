"""Reading this process's Prometheus metrics in tests."""
from prometheus_client import REGISTRY


def metric(name: str, **labels: str) -> float:
    """The samples of `name` summed over every label set that has `labels` (all of them when none)."""
    return sum(s.value for m in REGISTRY.collect() for s in m.samples
               if s.name == name and labels.items() <= s.labels.items())
