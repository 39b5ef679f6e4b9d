/*
 * dutybridge provisioning: a ServiceNow UI action ("Provision into PagerDuty") that asks
 * the dutybridge daemon to provision the current group, user or CI, or the records
 * selected in a list, and shows what it did. The daemon does the PagerDuty calls
 * (rate limited, idempotent: clicking twice creates nothing new).
 *
 * UI action: Table = sys_user_group (or sys_user, cmdb_ci), Action name =
 * dutybridge_provision, Client = false, Form link + List choice, Condition e.g.
 * gs.hasRole('x_pd_integration.admin'). For a CI as a business service, set
 * DUTYBRIDGE_AS = 'business' in a second UI action.
 *
 * System properties (see README-provisioning.md):
 *   x_dutybridge.provision_url    https://dutybridge.example.com/api/v1/provision
 *   x_dutybridge.provision_token  [plugins.provisioning] api_token of the daemon (type password2)
 *   x_dutybridge.mid_server       optional: MID server name, when the daemon is not reachable from the instance
 */
(function dutybridgeProvision(current) {
    var DUTYBRIDGE_AS = 'technical';           // cmdb_ci only: 'technical' or 'business'
    var WITH_DEPENDENCIES = false;             // cmdb_ci only: walk cmdb_rel_ci

    var what = {sys_user_group: 'groups', sys_user: 'users'}[current.getTableName()] || 'cis';
    var base = gs.getProperty('x_dutybridge.provision_url', '');
    var token = gs.getProperty('x_dutybridge.provision_token', '');
    if (!base || !token) {
        gs.addErrorMessage('dutybridge: set x_dutybridge.provision_url and x_dutybridge.provision_token first');
        action.setRedirectURL(current);
        return;
    }

    // A list action runs once per selected record; a form action once for the record.
    var refs = [current.getUniqueValue()];
    var body = {refs: refs, requested_by: gs.getUserName()};
    if (what === 'cis') {
        body.as = DUTYBRIDGE_AS;
        body.with_dependencies = WITH_DEPENDENCIES;
    }

    var request = new sn_ws.RESTMessageV2();
    request.setEndpoint(base.replace(/\/+$/, '') + '/' + what);
    request.setHttpMethod('POST');
    request.setRequestHeader('Authorization', 'Bearer ' + token);
    request.setRequestHeader('Content-Type', 'application/json');
    request.setRequestHeader('Accept', 'application/json');
    request.setHttpTimeout(120000);
    var mid = gs.getProperty('x_dutybridge.mid_server', '');
    if (mid) {
        request.setMIDServer(mid);
    }
    request.setRequestBody(JSON.stringify(body));

    try {
        var response = request.execute();
        var status = response.getStatusCode();
        var answer = {};
        try {
            answer = JSON.parse(response.getBody() || '{}');
        } catch (e) {
            answer = {error: 'not JSON: ' + response.getBody()};
        }
        if (status !== 200) {
            gs.addErrorMessage('dutybridge: ' + status + ' ' + (answer.error || 'error'));
        } else {
            (answer.outcomes || []).forEach(function (o) {
                var text = 'PagerDuty ' + o.kind + ' ' + o.name + ': ' + o.status + (o.detail ? ' (' + o.detail + ')' : '');
                if (o.status === 'failed') {
                    gs.addErrorMessage(text);
                } else {
                    gs.addInfoMessage(text);
                }
            });
        }
    } catch (ex) {
        gs.addErrorMessage('dutybridge: the daemon could not be reached: ' + ex.getMessage());
    }
    action.setRedirectURL(current);
})(current);
