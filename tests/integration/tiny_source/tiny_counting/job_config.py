"""The config module a run names to use the tiny source (``--job.custom_config_module
tiny_counting.job_config``): torchtitan imports it in every process before the config is parsed, so
the source is registered wherever the loader is built."""

from titan_recipes.config import build_job_config_class
from titan_recipes.data.registry import register_source

register_source("tiny_counting")

JobConfig = build_job_config_class()
