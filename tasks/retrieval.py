"""Retrieve: documents and skills for the expansion, assembled into a synthesis request."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from kevolve.search import stages

retrieve_task = task(stages.retrieve, name="retrieve", cache_policy=NO_CACHE)
