-- What DROP EXTENSION and DROP TABLE must not leave behind.

-- A peer's replication slot is not a database object: it would outlive the
-- extension and hold WAL. Refuse to drop the extension while peers exist
-- (the function reads the statement's parse tree: src/lifecycle.rs).
CREATE FUNCTION edgesync._guard_drop_extension() RETURNS event_trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'edgesync_guard_drop_extension';
COMMENT ON FUNCTION edgesync._guard_drop_extension() IS
    'Event trigger: refuses DROP EXTENSION edgesync while peers hold replication slots';
CREATE EVENT TRIGGER edgesync_guard_drop_extension ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION edgesync._guard_drop_extension();

-- A dropped table's enrolment, conflict policy and tombstones go with it
-- (its conflict_log rows stay: they are history). Otherwise a new table
-- that gets the same oid would inherit them.
CREATE FUNCTION edgesync._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone oid[];
BEGIN
    SELECT array_agg(objid) INTO gone
      FROM pg_event_trigger_dropped_objects()
     WHERE classid = 'pg_class'::regclass AND objsubid = 0 AND object_type = 'table';
    -- edgesync's own tables are among the dropped when the extension goes
    IF gone IS NULL OR to_regclass('edgesync.sync_table') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM edgesync.sync_table WHERE relid::oid = ANY (gone);
    DELETE FROM edgesync.conflict_table WHERE relid::oid = ANY (gone);
    DELETE FROM edgesync.tombstone WHERE relid = ANY (gone);
END
$$;
COMMENT ON FUNCTION edgesync._forget_dropped_tables() IS
    'Event trigger: forgets the enrolment, conflict policy and tombstones of dropped tables';
CREATE EVENT TRIGGER edgesync_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION edgesync._forget_dropped_tables();

REVOKE EXECUTE ON FUNCTION edgesync._guard_drop_extension(), edgesync._forget_dropped_tables() FROM PUBLIC;
