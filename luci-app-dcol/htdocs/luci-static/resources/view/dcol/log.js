'use strict';
'require tools.views as views';

/*
 * The system log, filtered to the dcol daemon's lines (procd sends its
 * stderr to syslog with the tag 'dcol'). Needs the ACL group
 * luci-app-dcol-log (ubus log read).
 */

return views.LogreadBox('dcol', _('Detour Collective log'));
