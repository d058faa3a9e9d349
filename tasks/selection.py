"""Select: the policy picks the parents to expand this round, each with its memory mode."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from kevolve.search import stages

select_task = task(stages.select, name="select", cache_policy=NO_CACHE)
