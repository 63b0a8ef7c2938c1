"""The layouts the checkpoint tests train (conftest.py), and their learning rate."""

LR = 1e-5  # Adam's first step moves a weight by ≤ ~4·LR (µP matrices get lr × 4)

# name -> (processes, parallel section)
LAYOUTS = {
    "single": (0, {}),
    "tp2": (2, {"tensor": 2}),
    "pp2": (2, {"pipeline": 2}),
    "tp2pp2": (4, {"tensor": 2, "pipeline": 2}),
    "dp2z1": (2, {"zero_stage": 1}),
    "dp2z2": (2, {"zero_stage": 2}),
    "dp2z3": (2, {"zero_stage": 3}),
    "bf16": (0, {}),  # bf16 training: a bf16 module copy beside the fp32 masters
}
