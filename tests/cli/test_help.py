"""``--help`` of every command: each option with its meaning and default; ``ktae train --help`` generated from
the job's documented fields with the built-in job's defaults; ``ktae eval --help`` by mode."""

import argparse
import dataclasses

import pytest

from ktae.cli import SUBCOMMANDS, HelpFormatter, command_parser, main


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit:
        main(list(argv))
    assert exit.value.code == 0
    return capsys.readouterr().out


def _recipe_default(field: dataclasses.Field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def test_ktae_help_lists_the_commands(capsys):
    out = _help(capsys, "--help")
    for command in SUBCOMMANDS:
        assert f"\n    {command} " in out
    assert "ktae train --help-all" in " ".join(out.split())


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_option_has_a_meaning_and_shows_its_default(command):
    parser = command_parser(command)
    formatter = HelpFormatter(parser.prog)
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"ktae {command} {action.option_strings[0]} has no help"
        if action.default is not None and action.default is not False and action.default != argparse.SUPPRESS:
            shown = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in shown.lower(), f"ktae {command} {action.option_strings[0]} hides its default"
    parser.format_help()  # formats without error (train: imports the job to list the keys)


def test_train_help_lists_every_job_key_with_the_built_in_default(capsys):
    from ktae.cli.train_help import yaml_value
    from ktae.integrations.trl.job import JOB_KEYS, JobArguments, default_job

    out = _help(capsys, "train", "--help")
    built_in = default_job(None)
    fields = dataclasses.fields(JobArguments)
    assert {f.name for f in fields} <= JOB_KEYS
    for field in fields:
        recipe = _recipe_default(field)
        value = built_in.get(field.name, recipe)
        line = next(line for line in out.splitlines() if line.startswith(f"  {field.name} = "))
        assert line.startswith(f"  {field.name} = {yaml_value(value)}")
        if yaml_value(recipe) != yaml_value(value):  # the built-in job's value is shown, the field's beside it
            assert f"recipe: {yaml_value(recipe)}" in line
        if field.metadata.get("minimum") is not None:
            assert f"integer >= {field.metadata['minimum']}" in line
        first_words = " ".join(field.metadata["help"].split()[:4])
        assert first_words in " ".join(out.split()), field.name
    # two defaults the built-in job overrides, as a user reads them
    assert "  model_name_or_path = tiny   [recipe: null]" in out
    real_model = default_job("smollm2")
    assert f"  max_steps = {built_in['max_steps']}   [real model: {real_model['max_steps']}; recipe: -1]" in out


def test_train_help_lists_the_ktae_keys_and_the_common_trl_ones(capsys):
    from trl import GRPOConfig

    from ktae.cli.train_help import COMMON_TRL_KEYS
    from ktae.integrations.trl.config import KTAEGRPOConfig
    from ktae.integrations.trl.job import DEFAULT_JOB, REAL_MODEL_JOB

    out = _help(capsys, "train", "--help")
    listed = {line.split(" = ")[0].strip() for line in out.splitlines() if line.startswith("  ") and " = " in line}
    trl_fields = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    assert set(COMMON_TRL_KEYS) <= trl_fields  # names TRL still has
    own = {f.name for f in dataclasses.fields(KTAEGRPOConfig) if f.name not in trl_fields} | {"beta"}
    set_by_the_built_in_jobs = {k for k in {**DEFAULT_JOB, **REAL_MODEL_JOB} if k in trl_fields}
    assert own | set(COMMON_TRL_KEYS) | set_by_the_built_in_jobs <= listed
    assert "output_dir" not in listed  # the run folder is --output-dir
    assert len(listed) < len(trl_fields)  # the rest: --help-all
    assert "KTAE weight of the Fisher term" in out


def test_train_help_all_lists_every_trainer_key(capsys):
    from ktae.integrations.trl.config import KTAEGRPOConfig

    out = _help(capsys, "train", "--help-all")
    for field in dataclasses.fields(KTAEGRPOConfig):
        if field.init and field.name != "output_dir":
            assert f"\n  {field.name} = " in out, field.name
    # TRL's help in full: the last words of a long one
    help_text = " ".join(
        next(f for f in dataclasses.fields(KTAEGRPOConfig) if f.name == "loss_type").metadata["help"].split()
    )
    assert " ".join(help_text.split()[-5:]) in " ".join(out.split())


def test_a_new_job_field_is_listed_without_a_change(monkeypatch, capsys):
    """The listing follows JobArguments and the built-in job, whatever fields they gain."""
    from ktae.integrations.trl import job

    @dataclasses.dataclass
    class Extended(job.JobArguments):
        brand_new_key: int = dataclasses.field(default=7, metadata={"help": "A key added later.", "minimum": 1})

    monkeypatch.setattr(job, "JobArguments", Extended)
    monkeypatch.setitem(job.DEFAULT_JOB, "brand_new_key", 9)
    out = _help(capsys, "train", "--help")
    assert "  brand_new_key = 9   [integer >= 1; recipe: 7]\n      A key added later." in out


def test_eval_help_shows_the_modes_and_the_defaults(capsys):
    out = _help(capsys, "eval", "--help")
    usage = out.split("\n\n")[0]
    for mode in ("--model PATH_OR_ID", "--responses FILE", "--compare RESULTS_JSON"):
        assert f"ktae eval {mode}" in usage  # one usage line per mode, its required option first
    assert "modes (give one):" in out and "comparison (--compare):" in out and "grading (--model, --responses):" in out
    flat = " ".join(out.split())
    assert "--max-new-tokens N most tokens generated per response (the paper's protocol) (default: 3000)" in flat
    assert "--grader {ktae,math-verify}" in flat and "(default: ktae)" in flat
    assert "--check-timeout SECONDS seconds per answer check (default: 5.0)" in flat
    assert "--reference [paper | FILE] --compare only:" in flat
