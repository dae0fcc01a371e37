from .roles import role_of


def console(request):
    return {"role": role_of(request.user) if hasattr(request, "user") else None}
