"""`kevolve kb ingest | query TEXT | skills | rebuild`: the knowledge base."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


def register(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--embedding", choices=("minilm", "hashing"),
                        help="embedding (default: $KEVOLVE_EMBEDDING, else minilm)")
    common.add_argument("--chroma-url", help="a `chroma run` server (default: $KEVOLVE_CHROMA_URL, else embedded)")

    p = sub.add_parser("kb", help="knowledge base: ingest the corpus, query it, list skills, rebuild the index")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ingest = verbs.add_parser("ingest", parents=[common], help="index the corpus; only changed files are re-embedded")
    ingest.add_argument("--corpus", type=Path, help="corpus folder (default: knowledge/ or $KEVOLVE_KNOWLEDGE_DIR)")
    ingest.set_defaults(func=ingest_cmd)

    query = verbs.add_parser("query", parents=[common], help="the chunks closest to a question")
    query.add_argument("text", help="the question")
    query.add_argument("--target", help="only chunks for this hardware target (or any)")
    query.add_argument("--family", help="only chunks for this operator family (or any)")
    query.add_argument("-k", type=int, default=5, help="how many (default 5)")
    query.add_argument("--json", action="store_true")
    query.set_defaults(func=query_cmd)

    skills = verbs.add_parser("skills", parents=[common], help="skills learnt from runs, most useful first")
    skills.add_argument("--target")
    skills.add_argument("--family")
    skills.add_argument("--json", action="store_true")
    skills.set_defaults(func=skills_cmd)

    rebuild = verbs.add_parser("rebuild", parents=[common],
                               help="recreate the Chroma index from the corpus and the skills table")
    rebuild.add_argument("--corpus", type=Path, help="corpus folder (default: knowledge/ or $KEVOLVE_KNOWLEDGE_DIR)")
    rebuild.set_defaults(func=rebuild_cmd)


def _open(args):
    from kevolve.knowledge.base import KnowledgeBase

    return KnowledgeBase.open(embedding=args.embedding, chroma_url=args.chroma_url)


def ingest_cmd(args) -> int:
    with _open(args) as kb:
        report = kb.ingest(args.corpus)
    for label, paths in (("added", report.added), ("updated", report.updated), ("removed", report.removed)):
        for path in paths:
            print(f"{label:<8} {path}")
    print(report.summary())
    return 0


def query_cmd(args) -> int:
    with _open(args) as kb:
        if kb.index.corpus_size() == 0:
            print(f"the {kb.embedding} index is empty: ingesting the corpus first (once)", file=sys.stderr)
        docs = kb.query(args.text, target=args.target, family=args.family, k=args.k)
    if args.json:
        print(json.dumps([{**asdict(d), "metadata": dict(d.metadata)} for d in docs], indent=2, default=list))
        return 0
    if not docs:
        print("nothing found; run `kevolve kb ingest` first, or loosen --target/--family")
    for n, doc in enumerate(docs, 1):
        body = doc.text.split("\n\n", 1)[-1]
        preview = " ".join(body.split())[:200]
        print(f"{n}. {doc.score:.3f}  {doc.source}\n   {preview}")
    return 0


def skills_cmd(args) -> int:
    with _open(args) as kb:
        skills = kb.skills(target=args.target, family=args.family)
    if args.json:
        print(json.dumps([asdict(s) for s in skills], indent=2, default=str))
        return 0
    if not skills:
        print("no skills yet: they are distilled when a search finds a child faster than its parent")
    for s in skills:
        print(f"{s.id}  {s.describe()}")
    return 0


def rebuild_cmd(args) -> int:
    with _open(args) as kb:
        kb.rebuild(args.corpus)
        corpus = kb.index.corpus_size()
        skills = len(kb.skills())
    print(f"rebuilt the {kb.embedding} index: {corpus} corpus chunks, {skills} skills")
    return 0
