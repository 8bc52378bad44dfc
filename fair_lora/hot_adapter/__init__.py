"""Which adapter is merged, and when: popularity over a sliding window and the share rule with hysteresis
(`popularity`: one engine's `HotAdapterPolicy`, the K-worker `WorkerPlanner`), whether a merge pays by the
engine's own step costs (`merge_gain`), and the switch between steps (`switch`). The merge's weight math is
`fair_lora.lora.hot_merge`."""
