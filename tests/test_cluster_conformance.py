"""The daemon's own protocol tests, unchanged, against the cluster's gateway (issue 17):
here ``daemon`` is the cluster, so the same client code meets the same behaviour.

Left out, because they test one process on purpose: tests that start daemons with options
(``start_daemon``/``fresh_daemon``: tokens, restarts, signals, queue and connection limits)
and ``test_cancel_removes_a_queued_job``, which needs its second job to wait behind the
first (two workers run both at once; the cluster's queued cancel is tested in
test_cluster.py), and ``test_two_origin_headers_are_refused_not_an_internal_error``: Ray
Serve's HTTP proxy answers a request with two Origin headers 400 itself, before any gateway
sees it (refused all the same, never an internal error)."""

from __future__ import annotations

import pytest

from test_daemon import (client, test_a_failing_job_fails_alone,  # noqa: F401
                         test_batch_image_i_equals_single_job_with_seed_plus_i,
                         test_browser_origins_are_refused,
                         test_cancel_stops_a_running_job_within_a_step_and_the_daemon_serves_on,
                         test_dns_rebinding_host_is_refused, test_fetch_of_unknown_job_is_an_error,
                         test_img2img_follows_the_init_image,
                         test_inpaint_leaves_unmasked_pixels_byte_identical,
                         test_limits_get_clear_errors_and_the_daemon_serves_on,
                         test_malformed_input_gets_errors_on_a_connection_that_keeps_working,
                         test_models_status_and_load, test_png_output_carries_parameters,
                         test_previews_arrive_at_the_asked_steps,
                         test_random_seed_is_reported_and_reproduces,
                         test_result_of_a_disconnected_client_can_be_fetched_by_id,
                         test_same_seed_same_pixels_other_seed_other_pixels,
                         test_two_clients_each_get_only_their_own_events, test_upload_limits,
                         test_txt2img_returns_image_and_exact_parameters,
                         test_welcome_announces_model_device_and_limits,
                         test_wrong_protocol_version_is_refused_clearly)
from test_hardening import (test_a_made_up_client_key_is_a_new_identity,  # noqa: F401
                            test_another_client_cannot_see_fetch_or_cancel_a_job,
                            test_cancel_of_a_finished_job_is_answered,
                            test_checks_that_need_no_model_answer_the_submit,
                            test_errors_do_not_echo_unbounded_input,
                            test_hostile_json_gets_an_error_and_the_connection_stays,
                            test_ipv6_loopback_host_without_port_is_allowed,
                            test_rejected_submits_let_go_of_their_uploads,
                            test_same_upload_for_init_image_and_mask_is_answered,
                            test_submit_without_job_is_answered_with_its_ref)


@pytest.fixture(scope="module")
def daemon(cluster):
    """The cluster in the daemon's place: ``url`` and ``port`` of Serve's proxy."""
    return cluster
