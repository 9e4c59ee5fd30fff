-- Organisation tiers (free, pro, business, enterprise), an optional per-organisation request
-- limit overriding the tier's, and the shared request counts of the rate limiter: one row
-- per organisation and minute (the sliding window weighs the previous minute's count).

ALTER TABLE orgs
    ADD CONSTRAINT orgs_tier_known CHECK (tier IN ('free', 'pro', 'business', 'enterprise')),
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0);

CREATE TABLE rate_windows (
    org_id  text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    minute  bigint NOT NULL,                -- Unix time // 60
    count   bigint NOT NULL,
    PRIMARY KEY (org_id, minute)
);
