from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [line.strip() for line in (here / "requirements.txt").read_text().splitlines() if line.strip()]

setup(
    name="moai-llm",
    version="0.1.0",
    description="Build, pretrain, fine-tune and chat with Qwen3-style language models on HuggingFace Transformers",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ (model configs, YAML examples) is installed as moai_llm/configs: the default model config of
    # `python train.py` must exist in a non-editable install too.
    packages=[*find_packages(include=["moai_llm", "moai_llm.*"]), "moai_llm.configs"],
    package_dir={"moai_llm.configs": "configs"},
    package_data={"moai_llm": ["assets/**/*", "serving/static/*"], "moai_llm.configs": ["*.json", "*.yaml"]},
    include_package_data=True,
    install_requires=requirements,
    extras_require={
        "flash": ["flash-attn>=2.6"],
        "qlora": ["bitsandbytes>=0.45"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.30", "prometheus_client>=0.17"],
        "eval": ["lm_eval>=0.4.13,<0.5", "matplotlib>=3.7"],
        # benchmarks/bench_time_to_loss.py: TRL's SFTTrainer is one of the peers, matplotlib draws the curves
        "bench": ["trl>=1.16", "matplotlib>=3.7"],
        # transformers[serving]: fastapi, uvicorn and the openai client (tests also run `transformers serve`)
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.1",
            "pexpect>=4.8",
            "psutil>=5.9",
            "transformers[serving]>=5.24,<6",
            "httpx>=0.27",
            "prometheus_client>=0.17",
            # [api]: lm-eval's local-completions client, run against serve.py by the tests
            "lm_eval[api]>=0.4.13,<0.5",
            "matplotlib>=3.7",
            # the formatter's style changes only between minor versions: CI checks with the one the code is formatted by
            "ruff>=0.17,<0.18",
        ],
    },
    license="Apache-2.0",
)
