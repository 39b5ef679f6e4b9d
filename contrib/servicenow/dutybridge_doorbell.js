/*
 * dutybridge doorbell: a ServiceNow business rule that tells the dutybridge daemon
 * which record changed. It sends no record data: the daemon re-reads the record
 * through the Table API with its own credentials, so the doorbell can stay tiny and
 * a forged one can make the daemon look, never inject data.
 *
 * Business rule: When = after, Insert + Update + Delete, Advanced. The call is
 * asynchronous (executeAsync: queued on the ECC queue, the user's transaction does not
 * wait for the daemon). Not When = async: an async rule re-loads `current` from the
 * database when its job runs, which fails for a delete.
 *
 * System properties (see README.md):
 *   x_dutybridge.doorbell_url    https://dutybridge.example.com/webhooks/servicenow
 *   x_dutybridge.doorbell_token  [servicenow] doorbell_token of the daemon (type password2)
 *   x_dutybridge.mid_server      optional: MID server name, when the daemon is not reachable from the instance
 *   x_dutybridge.skip_user       optional: user name whose changes do not ring (see README.md)
 *
 * Rhino ES5: no let/const, no arrow functions.
 */
(function executeRule(current, previous) {
    var PREFIX = 'x_dutybridge.';
    var url = gs.getProperty(PREFIX + 'doorbell_url', '');
    var token = gs.getProperty(PREFIX + 'doorbell_token', '');
    if (!url || !token) {
        gs.warn('dutybridge doorbell: system properties ' + PREFIX + 'doorbell_url and ' +
            PREFIX + 'doorbell_token must be set; not ringing');
        return;
    }

    // Off by default: the daemon recognises the echo of its own writes by comparing
    // with the state it last synced, which is exact even when the integration user
    // also does other work. Set this only for a user that nothing else uses.
    var skipUser = gs.getProperty(PREFIX + 'skip_user', '');
    if (skipUser && gs.getUserName() == skipUser) {
        return;
    }

    var body = {
        // The record's own class (cmdb_ci_server, not cmdb_ci) for a rule on a parent table.
        table: String(current.getRecordClassName() || current.getTableName()),
        sys_id: String(current.getUniqueValue()),
        operation: String(current.operation()),
        // Internal format, UTC: yyyy-MM-dd HH:mm:ss, as the daemon expects.
        sys_updated_on: String(current.getValue('sys_updated_on')),
        // Unique per change even when two changes share one second of sys_updated_on.
        sys_mod_count: String(current.getValue('sys_mod_count'))
    };

    try {
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(url);
        request.setHttpMethod('post');
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestHeader('Accept', 'application/json');
        request.setRequestHeader('Authorization', 'Bearer ' + token);
        request.setRequestBody(JSON.stringify(body));
        request.setHttpTimeout(10000);
        var mid = gs.getProperty(PREFIX + 'mid_server', '');
        if (mid) {
            request.setMIDServer(mid);
        }
        request.executeAsync();
    } catch (e) {
        // A lost doorbell is caught up by the daemon's reconciliation poll; never fail
        // the user's transaction over it.
        gs.error('dutybridge doorbell: could not queue the request for ' + body.table + ' ' +
            body.sys_id + ': ' + e);
    }
})(current, previous);
