"""Development tooling, not part of what a Swift cluster runs: the dev cluster
(a real Swift cluster on loopback), the demo, and the scheduler simulator."""
