export function bytes(n: number): string {
	if (!Number.isFinite(n)) return '–';
	const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
	let i = 0;
	while (Math.abs(n) >= 1024 && i < units.length - 1) {
		n /= 1024;
		i++;
	}
	return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

export function ago(iso: string | null | undefined): string {
	if (!iso) return '–';
	const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
	if (s < 5) return 'just now';
	if (s < 60) return `${s} s ago`;
	if (s < 3600) return `${Math.floor(s / 60)} min ago`;
	if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
	return `${Math.floor(s / 86400)} d ago`;
}

export function when(iso: string | null | undefined): string {
	return iso ? new Date(iso).toLocaleString() : '–';
}

export function memory(mb: number): string {
	return mb >= 1024 && mb % 1024 === 0 ? `${mb / 1024} GiB` : `${mb} MiB`;
}

/** Join a directory and a name the way the guest does. */
export function join(dir: string, name: string): string {
	return dir.endsWith('/') ? dir + name : `${dir}/${name}`;
}

export function parent(path: string): string {
	const cut = path.replace(/\/+$/, '').lastIndexOf('/');
	return cut <= 0 ? '/' : path.slice(0, cut);
}
