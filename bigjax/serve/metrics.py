"""The server's Prometheus metrics, in a registry of their own (one per app: tests run several)."""

import prometheus_client as prom

# Seconds: from a few milliseconds (a tiny model on a GPU) to minutes (a long answer on a CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServeMetrics:
  """Gauges the engine sets every step, histograms it observes as requests finish."""

  def __init__(self, num_slots: int):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.running = prom.Gauge("bigjax_requests_running", "sequences holding a decode slot",
                              registry=r)
    self.waiting = prom.Gauge("bigjax_requests_waiting", "sequences waiting for a slot",
                              registry=r)
    self.slot_use = prom.Gauge("bigjax_slot_use_ratio", "share of decode slots in use", registry=r)
    self.slots = prom.Gauge("bigjax_slots", "decode slots", registry=r)
    self.slots.set(num_slots)
    self.time_to_first_token = prom.Histogram(
        "bigjax_time_to_first_token_seconds", "submission to first token", registry=r,
        buckets=LATENCY_BUCKETS)
    self.time_per_output_token = prom.Histogram(
        "bigjax_time_per_output_token_seconds", "mean time between a sequence's tokens after the "
        "first", registry=r, buckets=TOKEN_BUCKETS)
    self.latency = prom.Histogram("bigjax_request_latency_seconds", "submission to last token",
                                  registry=r, buckets=LATENCY_BUCKETS)
    self.generated = prom.Counter("bigjax_generated_tokens", "tokens generated", registry=r)
    self.prompt = prom.Counter("bigjax_prompt_tokens", "prompt tokens prefilled", registry=r)
    self.finished = prom.Counter("bigjax_sequences_finished", "sequences finished, by reason",
                                 ["reason"], registry=r)

  def set_load(self, running: int, waiting: int, num_slots: int) -> None:
    self.running.set(running)
    self.waiting.set(waiting)
    self.slot_use.set(running / num_slots)

  def exposition(self) -> bytes:
    return prom.generate_latest(self.registry)
