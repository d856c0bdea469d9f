"""Sub-network evaluation: the grid of all 2^S configurations (shared stage prefixes), MACs, params,
latency, Pareto front and the area under the accuracy/MACs trade-off curve."""
from .complexity import complexity_table, latency_table, measure_latency
from .grid import evaluate_grid, grid_logits, select_configs
from .pareto import pareto_front, summarise, tradeoff_auc

__all__ = ["complexity_table", "evaluate_grid", "grid_logits", "latency_table", "measure_latency", "pareto_front",
           "select_configs", "summarise", "tradeoff_auc"]
