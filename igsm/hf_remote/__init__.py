"""The transformers code that travels with an exported igsm model that GPT-NeoX cannot describe
(Canon layers): ``python -m igsm export`` copies these two files into the folder, and
``config.json``'s ``auto_map`` names them, so ``AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True)`` runs them. They import only torch and transformers (never igsm).
"""

from pathlib import Path

REMOTE_CODE_FILES = ("configuration_igsm.py", "modeling_igsm.py")
REMOTE_CODE_DIR = Path(__file__).parent
