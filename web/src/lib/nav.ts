/** The dashboard's menu. A page is a route folder under src/routes plus its line here. `key` is the
 * second key of its `g` shortcut (g c: capsules); `admin` pages show for platform admins only. */
export interface NavItem {
	href: string;
	label: string;
	key: string;
	admin?: boolean;
}

export const NAV: NavItem[] = [
	{ href: '/dashboard/capsules', label: 'Capsules', key: 'c' },
	{ href: '/dashboard/templates', label: 'Templates', key: 't' },
	{ href: '/dashboard/builds', label: 'Builds', key: 'b' },
	{ href: '/dashboard/usage', label: 'Usage', key: 'd' },
	{ href: '/dashboard/keys', label: 'API keys', key: 'k' },
	{ href: '/dashboard/team', label: 'Team', key: 'm' },
	{ href: '/dashboard/audit', label: 'Audit log', key: 'a' },
	{ href: '/dashboard/hosts', label: 'Hosts', key: 'h' },
	{ href: '/dashboard/channels', label: 'Channels', key: 'w' },
	{ href: '/dashboard/settings', label: 'Settings', key: 's' },
	{ href: '/admin/users', label: 'Users', key: 'u', admin: true },
	{ href: '/admin/teams', label: 'All teams', key: 'y', admin: true },
	{ href: '/admin/capsules', label: 'All capsules', key: 'v', admin: true },
	{ href: '/admin/hosts', label: 'All hosts', key: 'x', admin: true },
	{ href: '/admin/templates', label: 'All templates', key: 'z', admin: true },
	{ href: '/admin/audit', label: 'Platform log', key: 'l', admin: true }
];
