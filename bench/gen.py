"""Generators of large workflow files for the benchmarks."""

from __future__ import annotations

import random


def layered_workflow(agents: int, *, width: int = 50, seed: int = 1) -> str:
    """A realistic large workflow: layers of ``width`` agents, each reading one to
    three agents of the layer before, with varied prompts, some JSON outputs,
    conditions, fan-outs and fallbacks."""
    rng = random.Random(seed)
    lines = [
        "version: 1",
        f"name: generated-{agents}",
        "description: A generated workflow for benchmarks.",
        "inputs:",
        "  topic: {type: string, default: batteries}",
        "  things: {type: list, default: [a, b, c]}",
        "defaults:",
        "  llm: {provider: openai, model: gpt-4o-mini, max_tokens: 400, temperature: 0.2}",
        "  timeout: 60",
        "  retry: {max_retries: 2}",
        "cost_budget: 500",
        "max_parallel_agents: 16",
        "agents:",
    ]
    for i in range(agents):
        layer = i // width
        lines.append(f"  a{i}:")
        deps: list[str] = []
        if layer > 0:
            first = (layer - 1) * width
            deps = sorted({f"a{first + rng.randrange(width)}" for _ in range(rng.randint(1, 3))})
            lines.append(f"    depends_on: [{', '.join(deps)}]")
        kind = i % 10
        if kind == 0:
            lines.append("    description: Summarise the findings so far.")
        lines.append("    prompt: |")
        lines.append(f"      Step {i} of the study of {{{{ inputs.topic }}}}.")
        for dep in deps:
            lines.append(f"      From {dep}: {{{{ agents.{dep}.output }}}}")
        lines.append("      Answer in three short paragraphs, citing the inputs above.")
        if kind == 3:
            lines.append("    output:")
            lines.append("      format: json")
            lines.append("      schema:")
            lines.append("        type: object")
            lines.append("        required: [summary, score]")
            lines.append("        properties:")
            lines.append("          summary: {type: string}")
            lines.append("          score: {type: number, minimum: 0, maximum: 10}")
        elif kind == 5 and deps:
            lines.append(f"    when: \"agents.{deps[0]}.status == 'completed'\"")
            lines.append("    trigger_rule: all_done")
        elif kind == 7:
            lines.append("    foreach: inputs.things")
            lines.append("    system: You review one item at a time.")
            lines[-3] = "      Review {{ item }} ({{ index }}) for {{ inputs.topic }}."
        elif kind == 9:
            lines.append("    llm: {model: gpt-4o, max_tokens: 800}")
            lines.append(
                "    fallbacks: [{model: gpt-4o-mini}, "
                "{provider: anthropic, model: claude-haiku-4-5}]"
            )
    lines.append("outputs:")
    lines.append(f'  final: "{{{{ agents.a{agents - 1}.output }}}}"')
    return "\n".join(lines) + "\n"
