"""Load generation and benchmark helpers.

``openloop`` (intended times, pacing), ``mix`` (priority classes by weight), ``recorder``
(per-class HDR histograms, statuses, goodput), ``wireclient`` / ``httpclient`` / ``busypoll``
(the binary protocol, raw HTTP/1.1 and a spinning client), ``drivers`` (open loop and
sequential), ``loadgen`` (a whole run), ``compare`` (interleaved series, maximum-rate search),
``report`` (the examples' run reports: per-stage latency rows, rung answers, JSON output)
and ``cli`` (the ``tailguard bench`` subcommand).
"""
