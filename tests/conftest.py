"""Test tiers. ``pytest -m "not slow"`` is the quick inner loop; CI runs everything (``pytest``).

A test is ``slow`` when it runs whole experiments (the CLI or ``run_experiment``, several runs, kills and
resumes, several processes), sweeps, injects faults, reproduces committed results or checks a statistic's
error rate by Monte Carlo, and took about 2.5 s or more on two CPU cores (``--durations``). Whole files are named in SLOW_FILES; single tests of
otherwise quick files in SLOW_TESTS, by function name (every parametrization of it).
tests/test_tiers.py checks that every name listed here still exists.
"""
from __future__ import annotations

import pytest

SLOW_FILES = {
    # committed-results reproductions
    "test_committed_frontier.py",
    "test_committed_image_frontier.py",
    "test_committed_results.py",
    "test_committed_run_records.py",
    # fault injection, sweeps, several processes, the manual's build
    "test_faults.py",
    "test_sweep.py",
    "test_run_data_parallel.py",
    "test_docs.py",
    # a new method's compare: a real canary and grid runs
    "test_compare.py",
}

SLOW_TESTS = {
    "test_checkpoint.py": {
        "test_every_method_resumes_to_the_same_result",
        "test_kill_right_after_any_checkpoint_resumes_exactly",
        "test_kill_9_at_random_moments_then_resume_is_byte_identical",
        "test_kill_while_proposing_a_round_resumes_exactly",
        "test_a_resumed_run_checkpoints_after_its_first_step",
        "test_time_based_mid_round_checkpoints",
    },
    "test_plugin_finetuner.py": {"test_readme_finetuner_runs_learns_and_resumes_mid_round"},
    "test_journal.py": {
        "test_kill_mid_round_resume_rebuys_nothing_and_matches",
        "test_mismatching_journal_is_refused_and_torn_line_ignored",
    },
    "test_run.py": {
        "test_killed_run_resumes_to_the_same_result",
        "test_pretrained_run_folder_holds_everything",
        "test_user_agent_plugs_in_by_module_path",
    },
    "test_plugin_task.py": {
        "test_entry_point_task_in_cli_sweep_and_gymnasium",
        "test_misbehaving_tasks_give_one_line_errors",
        "test_readme_task_runs_the_bo_agents",
        "test_readme_task_runs_from_the_cli",
        "test_misbehaving_plugin_agent_gives_one_line",
    },
    "test_fk_steering.py": {"test_cli_runs_on_vector_and_image_tiers"},
    "test_d3po.py": {"test_cli_run_on_levy_manifold"},
    "test_rlcm.py": {"test_cli_runs_on_vector_and_image_tiers"},
    "test_protocol.py": {"test_golden_fingerprints_match_the_committed_values"},
    "test_hostile.py": {
        # one CLI run per case (~2 s each): the agent's exit at each call and each malformed design
        "test_an_agent_exit_is_a_failure_naming_the_call_and_the_folder_resumes",
        "test_bad_designs_are_refused_in_one_line",
        "test_an_edited_journal_is_refused_on_resume_not_blamed_on_the_agent",
        "test_resume_refuses_other_settings",
        "test_two_processes_on_one_folder",
        "test_an_agent_that_overwrites_every_tensor_it_gets_changes_no_evaluation",
        "test_a_full_disk_stops_in_one_line_and_resumes_exactly",
    },
    "test_run_summary.py": {"test_tiny_sqdf_run_prints_the_summary"},
    "test_baselines_cli.py": {"test_cli_run_records_config"},
    "test_trackers.py": {"test_tensorboard_mirrors_each_round"},
    "test_settings.py": {"test_batch_size_above_budget"},
    "test_diversity_valid.py": {"test_run_writes_vendi_valid_every_round"},
    "test_bo.py": {"test_cli_runs_on_a_manifold_task"},
    "test_stable_diffusion.py": {"test_one_round_of_every_method"},
    "test_stats_verdicts.py": {
        "test_verdict_table_family_wise_error_rate_with_holm",
        "test_paired_t_false_positive_rate_is_five_percent",
        "test_bootstrap_t_covers_skewed_seeds_from_ten",
    },
    "test_perf_main.py": {"test_a_run_is_split_into_phases_that_fit_its_wall_time"},
    "test_perf_methods.py": {"test_runner_phases_come_from_the_phase_callbacks"},
    "test_perf_startup.py": {
        "test_a_synthetic_run_without_lora_never_imports_diffusers_or_peft",
        "test_perf_startup_row_and_append",
    },
    # whole runs in fresh interpreters (each pays the ~2 s start-up), a resume, every generated block
    "test_noise_scheduler.py": {"test_a_synthetic_run_does_not_import_diffusers"},
    "test_generated_blocks.py": {"test_repository_blocks_are_current"},
    "test_progress.py": {"test_a_resumed_run_predicts_from_its_recorded_rounds"},
    "test_lean_lora.py": {
        "test_a_vector_tier_fine_tuning_run_never_imports_peft",
        "test_a_short_sqdf_run_gives_the_numbers_it_gave_under_peft",
    },
    "test_plot.py": {"test_all_figures_render", "test_cli_two_budgets_and_all_samples"},
    "test_image_manifold.py": {"test_initial_noise_matches_the_forward_marginal_and_every_sampler_uses_it"},
    "test_frontier.py": {"test_runs_csv_rebuilds_the_tables_and_plots_without_the_run_folders"},
    "test_until_decided.py": {"test_bonferroni_over_looks_keeps_the_false_positive_rate_at_most_five_percent"},
    "test_dts.py": {"test_cli_runs_on_vector_and_image_tiers"},
    "test_find.py": {"test_cli_runs_on_vector_and_image_tiers"},
    "test_distributed.py": {"test_two_process_gradients_equal_union_batch"},  # two processes
    "test_perf_sd.py": {"test_perf_sd_tiny_cpu"},  # a perf script's whole run
}


def is_slow(file_name: str, test_name: str) -> bool:
    return file_name in SLOW_FILES or test_name in SLOW_TESTS.get(file_name, ())


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        if is_slow(item.path.name, name):
            item.add_marker(pytest.mark.slow)
