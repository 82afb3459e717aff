#!/usr/bin/env bash
# Every stage on this CPU in a few minutes: synthetic data, stage 1, stage 2, LoRA, merge. Run from the repository root.
set -euo pipefail
python -c "from hf_medvlm.training import make_tiny_dataset; make_tiny_dataset('outputs/tiny/data', num_images=16)"
python -m hf_medvlm.training --config recipes/tiny/stage1_alignment.yaml
python -m hf_medvlm.training --config recipes/tiny/stage2_instruction.yaml
python -m hf_medvlm.training --config recipes/tiny/lora.yaml
python -c "from hf_medvlm.training import merge; merge('outputs/tiny/lora', 'outputs/tiny/lora_merged')"
