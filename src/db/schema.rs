//! Diesel table definitions, restricted to types both backends share (JSON is text).

diesel::table! {
    jobs (id) {
        id -> BigInt,
        campaign -> BigInt,
        reference -> Nullable<Text>,
        name -> Nullable<Text>,
        email -> Nullable<Text>,
        numbers -> Nullable<Text>,
        address_lines -> Nullable<Text>,
        postal_code -> Nullable<Text>,
        city -> Nullable<Text>,
        country -> Nullable<Text>,
        appointment -> Nullable<Timestamp>,
        data -> Nullable<Text>,
        label -> Nullable<Text>,
        url -> Nullable<Text>,
        value -> Nullable<Double>,
        state -> Integer,
        created_at -> Nullable<Timestamp>,
        first_seen_at -> Timestamp,
        last_seen_at -> Timestamp,
        remote_deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    outbox (id) {
        id -> BigInt,
        op -> Text,
        campaign -> Nullable<BigInt>,
        reference -> Nullable<Text>,
        job_id -> Nullable<BigInt>,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        http_status -> Nullable<Integer>,
        result_job_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        next_attempt_at -> Timestamp,
        first_sent_at -> Nullable<Timestamp>,
        in_doubt -> Bool,
        sent_payload -> Nullable<Text>,
        merged_into -> Nullable<BigInt>,
    }
}

diesel::table! {
    changefeed_consumers (name) {
        name -> Text,
        last_seq -> BigInt,
        updated_at -> Timestamp,
        pending_last_seq -> Nullable<BigInt>,
        paused_until -> Nullable<Timestamp>,
        paused_reason -> Nullable<Text>,
    }
}

diesel::table! {
    job_changes (seq) {
        seq -> BigInt,
        job_id -> BigInt,
        campaign -> BigInt,
        reference -> Nullable<Text>,
        kind -> Text,
        old_state -> Nullable<Integer>,
        new_state -> Nullable<Integer>,
        changed_fields -> Text,
        source -> Text,
        observed_at -> Timestamp,
    }
}

diesel::table! {
    sync_runs (id) {
        id -> BigInt,
        #[sql_name = "trigger"]
        trigger_ -> Text,
        mode -> Text,
        started_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
        status -> Text,
        jobs_pulled -> BigInt,
        jobs_changed -> BigInt,
        pushed_ok -> BigInt,
        pushed_failed -> BigInt,
        api_calls -> BigInt,
        error -> Nullable<Text>,
        jobs_quarantined -> BigInt,
    }
}

diesel::table! {
    quarantine (item_key) {
        item_key -> Text,
        job_id -> Nullable<BigInt>,
        campaign -> Nullable<BigInt>,
        reason -> Text,
        raw -> Text,
        first_seen_at -> Timestamp,
        last_seen_at -> Timestamp,
    }
}

diesel::table! {
    sync_state (key) {
        key -> Text,
        value -> Text,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    campaigns (campaign) {
        campaign -> BigInt,
        added_at -> Timestamp,
        last_full_listing_at -> Nullable<Timestamp>,
        refused_at -> Nullable<Timestamp>,
        refused_status -> Nullable<Integer>,
        refused_reason -> Nullable<Text>,
        deletes_held_at -> Nullable<Timestamp>,
        deletes_held -> Nullable<Integer>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    jobs,
    outbox,
    job_changes,
    sync_runs,
    sync_state,
    campaigns,
    quarantine,
    changefeed_consumers
);
