"""Distil: a skill from a re-measured kernel that beat its parent, into the knowledge base."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from kevolve.search import stages

distill_task = task(stages.distill, name="distill", cache_policy=NO_CACHE)
