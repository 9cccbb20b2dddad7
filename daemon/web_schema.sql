-- The Hanjullo web service's PostgreSQL tables that the node reads or writes, as they exist
-- in production: our own DDL, written from the public repository hoyun5295-ctrl/TargetupAI
-- at commit e7c1db7ae92076f26b5ee008aa1a1f2890411f5d (2026-04-27). Nothing here is copied.
--
-- Sources, cited per column or constraint where the choice is not obvious:
--   SCHEMA.md        status/SCHEMA.md (the web's own reference; "code wins" over it)
--   STATUS.md        status/STATUS.md (the DDL the web's engineers applied, with dates)
--   schema.sql       database/schema.sql, schema_main.sql, schema_company_template.sql
--                    (January 2026 first drafts: stale, used only where nothing newer says)
--   cp / cl / sq …   packages/backend/src/routes/campaigns.ts, utils/campaign-lifecycle.ts,
--                    utils/sms-queue.ts, … (the short names of /work/shared/WEBSERVICE.md)
-- "inferred" marks a choice no DDL states and the code implies; "unknown" one nothing decides.
--
-- The repository has no DDL at all for spam_filter_devices and ai_training_logs, and the
-- other tables' DDL is older than the code: every column the code writes is here even where
-- SCHEMA.md lacks it. Tables the node never touches are left out; `customers` holds only
-- the columns the sending paths read. UUID defaults use gen_random_uuid() (core since
-- PostgreSQL 13; the web's code calls it itself, routes/companies.ts:1277); the drafts'
-- uuid_generate_v4() (schema.sql:8, 17) gives the same kind of value.
--
-- The web's pool runs with TimeZone = Etc/UTC and parses every `timestamp` (without time
-- zone) as UTC (config/database.ts:4-5). The fixture loader sets that on the database.

-- ---- line groups -------------------------------------------------------------------------
-- SCHEMA.md:966-976. Absent from every DDL file.
CREATE TABLE sms_line_groups (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    group_name varchar(50),
    group_type varchar(20),                       -- bulk | test | auth (SCHEMA.md:971)
    sms_tables text[],
    -- inferred: the admin INSERT omits it (routes/admin.ts:2382) and every reader wants
    -- `is_active = true` (sq:57, 85, 126, 141), so a new group must default to active.
    is_active boolean DEFAULT true,
    sort_order integer DEFAULT 0,                 -- admin.ts:2385 writes `sortOrder || 0`
    created_at timestamptz DEFAULT now(),         -- admin.ts:2359 orders by it
    updated_at timestamptz DEFAULT now()
);

-- ---- plans and companies -----------------------------------------------------------------
-- SCHEMA.md:626-656; NOT NULLs and UNIQUE from schema_main.sql:30-38 (the admin INSERT,
-- routes/admin.ts:936, writes exactly those four columns).
CREATE TABLE plans (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    plan_code varchar(20) NOT NULL UNIQUE,
    plan_name varchar(50) NOT NULL,
    max_customers integer NOT NULL,
    monthly_price numeric(12,2) NOT NULL,
    is_active boolean DEFAULT true,
    trial_days integer,
    ai_analysis_level varchar(20) DEFAULT 'none',
    customer_db_enabled boolean DEFAULT false,
    target_send_enabled boolean DEFAULT false,
    ai_mapping_enabled boolean DEFAULT false,
    spam_filter_enabled boolean DEFAULT false,    -- STATUS.md:3849
    ai_messaging_enabled boolean DEFAULT false,
    auto_campaign_enabled boolean DEFAULT false,  -- AUTO-SCHEDULE-DESIGN.md:35
    max_auto_campaigns integer,
    auto_spam_test_enabled boolean DEFAULT false, -- STATUS.md:2650
    ai_premium_enabled boolean DEFAULT false,
    mobile_dm_enabled boolean DEFAULT false,
    direct_recipient_limit integer,
    created_at timestamp DEFAULT now()
);

-- SCHEMA.md:189-257 plus the columns the code reads that SCHEMA.md lacks.
CREATE TABLE companies (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(100) NOT NULL,                   -- schema.sql:18
    company_name varchar(100),                    -- NOT NULL in schema_main.sql:56: write it
    company_code varchar(20) UNIQUE,              -- NOT NULL UNIQUE in schema_main.sql:55: write it
    business_number varchar(20),
    business_type varchar(50),
    ceo_name varchar(50),
    brand_name varchar(100),
    brand_slogan varchar(200),
    brand_description text,
    brand_tone varchar(50),                       -- read by the training logger (cp:918, 1795)
    contact_name varchar(50),
    contact_email varchar(100),
    contact_phone varchar(20),
    address text,
    manager_phone varchar(20),
    manager_contacts jsonb,
    opt_out_080_number varchar(20),
    reject_number varchar(20),
    sender_number_preregistered boolean DEFAULT false,
    status varchar(20),
    -- NOT NULL in schema_main.sql:68, but every reader LEFT JOINs plans (sf:41-44): inferred
    -- nullable. The node sets it when it creates a company.
    plan_id uuid REFERENCES plans (id),
    trial_expires_at timestamp,
    subscription_status varchar(20),              -- SCHEMA.md:657
    monthly_budget numeric(12,2),
    cost_per_sms numeric(6,2),
    cost_per_lms numeric(6,2),
    cost_per_mms numeric(6,2),
    cost_per_kakao numeric(6,2),
    cost_per_test_sms numeric(6,2),               -- not in SCHEMA.md; routes/billing.ts:157
    cost_per_test_lms numeric(6,2),               -- not in SCHEMA.md; routes/billing.ts:157
    service_type varchar(20),                     -- not in SCHEMA.md; billing.ts:869 (type inferred)
    billing_type varchar(20) DEFAULT 'postpaid',  -- SCHEMA.md:224; prepaid.ts:22
    balance numeric(15,2) DEFAULT 0,              -- SCHEMA.md:225; prepaid.ts:34
    deposit_account_info text,
    send_start_hour integer DEFAULT 9,
    send_end_hour integer DEFAULT 21,
    daily_limit integer,
    daily_limit_per_customer integer,
    holiday_send_allowed boolean,
    duplicate_prevention_days integer DEFAULT 7,
    cross_category_allowed boolean,
    target_strategy varchar(50),
    excluded_segments text,
    approval_required boolean,
    approver_email varchar(100),
    use_db_sync boolean,
    use_file_upload boolean,
    data_input_method varchar(20),
    db_name varchar(100),
    customer_schema jsonb,                        -- stq:306
    enabled_fields jsonb,
    test_contact_mode varchar(20),
    store_code_list jsonb,
    kakao_enabled boolean DEFAULT false,          -- not in SCHEMA.md; cp:774, 1460 (inferred)
    basic_analysis_url varchar(400),
    premium_analysis_enabled boolean DEFAULT false,
    premium_analysis_url varchar(400),
    print_url varchar(400),
    alarm_threshold integer DEFAULT 30000,
    use_product_category_large boolean DEFAULT true,
    use_product_category_medium boolean DEFAULT true,
    use_product_category_small boolean DEFAULT true,
    api_key varchar(100),
    api_secret varchar(100),
    auto_campaign_override integer,
    max_users integer DEFAULT 5,
    session_timeout_minutes integer DEFAULT 30,
    -- Not in SCHEMA.md's companies table (WEBSERVICE.md §7) but read by every send
    -- (sq:82-87). Whether it has a foreign key is unknown: the group delete checks for
    -- assigned companies itself (admin.ts:2437-2441), as it would without one.
    line_group_id uuid REFERENCES sms_line_groups (id),
    created_by uuid,
    created_at timestamp DEFAULT now(),
    updated_at timestamp DEFAULT now()
);

-- ---- users -------------------------------------------------------------------------------
-- SCHEMA.md:903-926; NOT NULLs and UNIQUE from schema.sql:46-60. The CHECK there
-- (user_type IN ('admin','user')) cannot be in production: the code inserts 'system'
-- users (routes/companies.ts:1276).
CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id uuid NOT NULL REFERENCES companies (id),
    login_id varchar(50) NOT NULL UNIQUE,
    password_hash varchar(255) NOT NULL,
    user_type varchar(20) NOT NULL,
    role varchar(20),
    name varchar(100) NOT NULL,
    email varchar(100),
    phone varchar(20),
    department varchar(100),
    status varchar(20),
    is_active boolean DEFAULT true,               -- inferred: unsubscribe-helper.ts:120 COALESCE(…, true)
    is_system boolean DEFAULT false,              -- SYNC-AGENT-V1.5.0-DESIGN.md:514
    store_codes text[],                           -- admin.ts:86 (type inferred)
    must_change_password boolean,
    password_changed_at timestamp,
    -- STATUS.md:3795 (applied 2026-03-08).
    line_group_id uuid REFERENCES sms_line_groups (id) ON DELETE SET NULL,
    opt_out_080_number varchar(20),
    opt_out_auto_sync boolean DEFAULT false,
    manager_contacts jsonb,
    created_at timestamp DEFAULT now(),
    updated_at timestamp DEFAULT now(),
    last_login_at timestamp
);

-- ---- sender numbers and callbacks --------------------------------------------------------
-- schema.sql:222-237 (SCHEMA.md:766-776 lists the same columns).
CREATE TABLE sender_numbers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id uuid NOT NULL REFERENCES companies (id),
    user_id uuid REFERENCES users (id),           -- NULL: shared by the company
    phone_number varchar(20) NOT NULL,
    description varchar(200),
    is_verified boolean DEFAULT false,
    is_active boolean DEFAULT true,
    created_at timestamp DEFAULT now(),
    UNIQUE (company_id, phone_number)
);

-- SCHEMA.md:101-112.
CREATE TABLE callback_numbers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id uuid REFERENCES companies (id),
    phone varchar(20),                            -- stored as typed; readers strip '-' (cp:632)
    label varchar(100),
    is_default boolean DEFAULT false,             -- inferred: every INSERT writes it (admin.ts:828)
    store_code varchar(50),
    store_name varchar(100),
    assignment_scope varchar(10) NOT NULL DEFAULT 'all',  -- SCHEMA.md:110 (D87)
    created_at timestamp DEFAULT now()
);

-- SCHEMA.md:114-122.
CREATE TABLE callback_number_assignments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    callback_number_id uuid REFERENCES callback_numbers (id) ON DELETE CASCADE,
    user_id uuid REFERENCES users (id) ON DELETE CASCADE,
    assigned_by uuid,
    created_at timestamptz DEFAULT now(),
    UNIQUE (callback_number_id, user_id)          -- sender-registration.ts:520 ON CONFLICT
);

-- ---- customers (the columns the sending paths read) ---------------------------------------
-- SCHEMA.md:308-353. The full table has ~40 more columns (purchases, grades, …) that no
-- path the node shares reads.
CREATE TABLE customers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id uuid REFERENCES companies (id),
    phone varchar(20),
    name varchar(100),
    store_code varchar(50),
    store_name varchar(100),
    store_phone varchar(20),
    callback varchar(20),
    sms_opt_in boolean,
    is_opt_out boolean,
    is_invalid boolean,
    is_active boolean,
    custom_fields jsonb,
    source varchar(20),
    uploaded_by uuid REFERENCES users (id),
    created_at timestamp DEFAULT now(),
    updated_at timestamp DEFAULT now()
);
-- SCHEMA.md:352; customer-upsert.ts:156 ON CONFLICT (company_id, COALESCE(store_code,'__NONE__'), phone).
CREATE UNIQUE INDEX customers_company_store_phone
    ON customers (company_id, COALESCE(store_code, '__NONE__'), phone);
CREATE INDEX customers_uploaded_by ON customers (uploaded_by);  -- SCHEMA.md:353

-- ---- unsubscribes (per user) --------------------------------------------------------------
-- SCHEMA.md:857-871 (B17-01: keyed by user, not company).
CREATE TABLE unsubscribes (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id uuid REFERENCES companies (id),
    user_id uuid NOT NULL REFERENCES users (id),
    phone varchar(20),                            -- digits only (normalised before insert)
    source varchar(20),                           -- manual/upload/080_ars/080_ars_sync/db_upload
    created_at timestamp DEFAULT now(),
    UNIQUE (user_id, phone)                       -- unsubscribe-helper.ts:191 ON CONFLICT
);
CREATE INDEX unsubscribes_company ON unsubscribes (company_id);  -- SCHEMA.md:871

-- ---- campaigns ----------------------------------------------------------------------------
-- SCHEMA.md:144-187 plus the columns the sending paths write (cp:506-530, 1468-1497,
-- acw:723-729) that SCHEMA.md lacks.
CREATE TABLE campaigns (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NOT NULL in schema_company_template.sql:254, but the direct-send INSERT omits it
    -- (cp:1469): production's is nullable. Readers use created_by (results.ts:180-190).
    user_id uuid REFERENCES users (id),
    company_id uuid REFERENCES companies (id),
    campaign_name varchar(200) NOT NULL,          -- schema_company_template.sql:257
    description text,
    user_prompt text,
    ai_mode boolean DEFAULT false,
    -- SCHEMA.md:155 says "ai/manual"; the code writes 'direct' (cp:1471), 'auto' (acw:727)
    -- and nothing for AI campaigns (cp:506): no default, no CHECK.
    send_type varchar(20),
    target_spec jsonb,
    target_filter jsonb,
    target_count integer,
    total_target_count integer DEFAULT 0,
    -- The drafts' CHECK (schema_company_template.sql:267) is not assumed: brand sends write
    -- 'LMS' for Kakao (cp:2442) and the draft list is older than MMS images.
    message_type varchar(10),
    message_content text,
    message_template text,
    message_subject varchar(200),
    subject varchar(200),
    callback_number varchar(20),
    sender_number_id uuid,
    kakao_profile_id uuid,
    kakao_template_id uuid,
    is_ad boolean DEFAULT false,                  -- cp:1466-1467: "always stored as DEFAULT(false)"
    -- DEFAULT 0 per schema_company_template.sql:274-276; readers still guard NULL (cl:301).
    sent_count integer DEFAULT 0,
    success_count integer DEFAULT 0,
    fail_count integer DEFAULT 0,
    -- DEFAULT 'draft' per schema_company_template.sql:283 (the AI INSERT, cp:506, omits
    -- status and new campaigns are drafts); its CHECK there ('sent', no 'completed' or
    -- 'failed') cannot be in production, the code writes completed/failed (cl:227).
    status varchar(20) DEFAULT 'draft',
    scheduled_at timestamptz,                     -- SCHEMA.md:172
    sent_at timestamptz,                          -- SCHEMA.md:173 (an absolute time)
    send_rate_per_minute integer,
    analysis_start_date date,
    analysis_end_date date,
    event_start_date date,
    event_end_date date,
    excluded_phones text[],
    created_by uuid REFERENCES users (id),
    cancelled_by uuid,
    cancelled_by_type varchar(20),
    cancel_reason text,
    cancelled_at timestamp,                       -- SCHEMA.md:184: without time zone (UTC wall)
    -- Written by the send paths, absent from SCHEMA.md (types inferred from the values):
    send_channel varchar(20),                     -- sms|kakao|both|alimtalk (cp:1487)
    mms_image_paths jsonb,                        -- utils/mms-image-util.ts:4 says JSONB
    kakao_bubble_type varchar(20),
    kakao_sender_key varchar(100),
    kakao_targeting varchar(10),
    kakao_attachment_json text,
    kakao_carousel_json text,
    kakao_resend_type varchar(10),
    use_individual_callback boolean DEFAULT false,
    individual_callback_column varchar(50),       -- STATUS.md:1958
    created_at timestamptz DEFAULT now(),         -- SCHEMA.md:185
    updated_at timestamptz DEFAULT now()
);

-- ---- campaign_runs ------------------------------------------------------------------------
-- SCHEMA.md:124-142, column for column. Note the types: scheduled_at, sent_at, started_at,
-- completed_at and created_at are `timestamp` (no time zone) here, `timestamptz` on
-- campaigns. The web writes NOW()/CURRENT_TIMESTAMP into them (cp:899, 1786; UTC wall
-- clock, its sessions are Etc/UTC) but scheduled_at from a JS Date (cp:763), which
-- node-postgres sends with the process's +09:00 offset and PostgreSQL drops: that column
-- holds KST wall clock.
CREATE TABLE campaign_runs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- SCHEMA.md:128 "FK"; the draft delete removes runs first (cp:2374), as a foreign
    -- key without ON DELETE CASCADE requires.
    campaign_id uuid REFERENCES campaigns (id),
    run_number integer,                           -- max + 1 per campaign (cp:740-745)
    target_filter jsonb,
    sent_count integer,
    success_count integer,
    fail_count integer,
    status varchar(20),
    scheduled_at timestamp,
    sent_at timestamp,
    target_count integer,
    message_content text,                         -- never written by the web
    message_type varchar(20),                     -- never written by the web
    started_at timestamp,                         -- never written by the web
    completed_at timestamp,                       -- never written by the web
    -- inferred DEFAULT: the AI and auto INSERTs omit it (cp:752, acw:910) and sync selects
    -- on it (cl:177).
    created_at timestamp DEFAULT now()
);

-- ---- prepaid ledger -----------------------------------------------------------------------
-- SCHEMA.md:1091-1103 plus payment_method (prepaid.ts:50, type inferred) and created_by
-- (BUGS.md:384).
CREATE TABLE balance_transactions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id uuid REFERENCES companies (id),
    type varchar(20),                             -- charge/deduct/refund/admin_*/deposit_charge
    amount numeric(15,2),
    balance_after numeric(15,2),
    description text,
    reference_type varchar(30),
    reference_id uuid,                            -- campaigns.id, spam_filter_tests.id or zero UUID
    admin_id uuid,
    payment_method varchar(20),
    created_by uuid REFERENCES users (id),
    created_at timestamptz DEFAULT now()
);

-- ---- spam-filter test phones --------------------------------------------------------------
-- No DDL anywhere and not in SCHEMA.md (WEBSERVICE.md §7): every column inferred from
-- routes/spam-filter.ts:392-396 (report), 712-719 (registration upsert), 739-741 (admin
-- list) and stq:156-158. There is no unique key on phone.
CREATE TABLE spam_filter_devices (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- UNIQUE: sf:715 ON CONFLICT (device_id). Whether it is NOT NULL is unknown: the
    -- node always writes one.
    device_id varchar(100) UNIQUE,
    carrier varchar(10),                          -- SKT | KT | LGU (sf:707)
    phone varchar(20),
    device_name varchar(100),
    -- inferred: the registration INSERT omits it and queue creation selects is_active = true.
    is_active boolean DEFAULT true,
    last_seen_at timestamptz,
    created_at timestamptz DEFAULT now()          -- inferred: sf:740 orders by it
);

-- ---- spam-filter tests --------------------------------------------------------------------
-- SCHEMA.md:1148-1168 with the applied DDL of STATUS.md:2652-2656 and FLYER-STATUS.md:519.
CREATE TABLE spam_filter_tests (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id uuid REFERENCES companies (id),
    user_id uuid REFERENCES users (id),           -- the history screens JOIN users (sf:609, 640)
    callback_number varchar(20),
    message_content_sms text,
    message_content_lms text,
    message_hash varchar(64),                     -- 16 hex digits written (stq:109-113)
    spam_check_number varchar(20),                -- its DEFAULT was dropped (STATUS.md:2656)
    source varchar(20) DEFAULT 'manual',          -- STATUS.md:2652; values manual | auto_ai
    -- varchar(2) in SCHEMA.md:1160 and STATUS.md:2653, widened to varchar(10) on 2026-04-13
    -- (FLYER-STATUS.md:519): the auto worker writes 'final' (acw:1052).
    variant_id varchar(10),
    batch_id uuid,                                -- STATUS.md:2654
    -- queued | active | completed (and 'pending' still checked, sf:77); INSERTs always
    -- write it (stq:186, sf:158): no default.
    status varchar(20),
    started_at timestamptz,                       -- never written by the web
    completed_at timestamptz,
    created_at timestamptz DEFAULT now()          -- inferred: both INSERTs RETURNING created_at
);
CREATE INDEX idx_spam_filter_tests_company ON spam_filter_tests (company_id, created_at DESC);
CREATE INDEX idx_spam_filter_tests_status ON spam_filter_tests (status) WHERE status = 'active';
-- SCHEMA.md:1168 describes this index as (company_id, status, batch_id, variant_id)
-- WHERE status = 'active'; the DDL applied (STATUS.md:2655, AUTO-SPAM-TEST-DESIGN.md:95)
-- is this one, which is what the queue's ORDER BY created_at (stq:270-277) needs.
CREATE INDEX idx_spam_filter_tests_queued ON spam_filter_tests (status, created_at)
    WHERE status = 'queued';

-- SCHEMA.md:1170-1187. No unique key on (test_id, carrier, message_type): the screens take
-- the first row per cell (SFM:373), so a second row for a cell is never shown.
CREATE TABLE spam_filter_test_results (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    test_id uuid REFERENCES spam_filter_tests (id),
    carrier varchar(20),
    message_type varchar(10),                     -- SMS | LMS
    phone varchar(20),
    sms_table varchar(50),                        -- unused by the web
    sms_msgkey varchar(100),                      -- unused by the web; a string, not a number
    message_hash varchar(64),                     -- unused by the web
    received boolean DEFAULT false,
    received_at timestamptz,
    result varchar(20),                           -- pass|blocked|failed|timeout|NULL (SCHEMA.md:1186)
    created_at timestamptz DEFAULT now()          -- inferred: the INSERTs omit it (stq:215, sf:189)
);
CREATE INDEX idx_spam_filter_results_test ON spam_filter_test_results (test_id);
CREATE INDEX idx_spam_filter_results_pending ON spam_filter_test_results (test_id, received)
    WHERE received = false;

-- ---- training data ------------------------------------------------------------------------
-- No DDL anywhere and not in SCHEMA.md: columns from the logger's INSERT
-- (training-logger.ts:281-302) and its metrics UPDATE (:343-350); types inferred from the
-- values bound (:304-328): JSON.stringify'd values as jsonb, the Date as timestamptz.
CREATE TABLE ai_training_logs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),  -- unknown (the INSERT never names it)
    source_ref varchar(64) NOT NULL UNIQUE,       -- :301 ON CONFLICT (source_ref); 32 hex written
    tenant_ref varchar(64),                       -- HMAC of companies.id, 32 hex (:240)
    industry_code varchar(50),
    brand_tone varchar(50),
    user_prompt text,                             -- masked (:243-245)
    target_filter jsonb,
    target_count integer,
    segment_key varchar(100),
    message_type varchar(10),                     -- SMS | LMS | MMS | KAKAO (:79)
    is_ad boolean,
    candidates jsonb,
    selected_candidate_id varchar(10),
    final_message text,                           -- masked (:248)
    final_source varchar(20),                     -- selected_as_is | edited | manual
    message_features jsonb,
    send_at timestamptz,
    prompt_version varchar(20),
    persona_version varchar(20),
    policy_version varchar(20),
    model_id varchar(100),
    model_params jsonb,
    guardrail_actions jsonb,
    redaction_version varchar(20),
    -- Filled by the result sync (:343-350); the INSERT never writes them: NULL until then
    -- (whether they have a default is unknown).
    sent_count integer,
    success_count integer,
    fail_count integer,
    spam_blocked integer,
    metrics_updated_at timestamptz,
    created_at timestamptz DEFAULT now()
);
